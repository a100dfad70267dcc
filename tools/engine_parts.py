"""Parts of tools/gpu_engine_check.py about the engine itself: is it right, what does a batch
cost the host, how much does the engine add to the bare tail, the affine path.

Each part takes the ``Context`` and returns its record: ``status`` ("ok", "fail", "skip"),
``summary`` (the figures of its STEP line) and its data.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

import chip_fast
from chip_fast import DistillSettings
from chip_fast.distill import tails
from chip_fast.distill.job import DistillJob


@dataclass
class Context:
    device: torch.device
    quick: bool
    parts: dict = field(default_factory=dict)    # records of the parts run so far
    models: dict = field(default_factory=dict)   # built once per process

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def model(self, name: str) -> nn.Module:
        """torchvision's architecture with random weights (no weights travel to the GPU)."""
        if name not in self.models:
            import torchvision
            torch.manual_seed(0)
            self.models[name] = getattr(torchvision.models, name)().eval()
        return self.models[name].to(self.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """Full float32 matmuls and convolutions on CUDA: PyTorch runs convolutions in TF32 by
    default, 1e-3 off, the size of the differences a comparison must find."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def tail_runners() -> Iterator[list]:
    """Every TailRunner made inside, to read its graph captures."""
    made: list = []
    init = tails.TailRunner.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)
    tails.TailRunner.__init__ = record
    try:
        yield made
    finally:
        tails.TailRunner.__init__ = init


def captures(runners: list) -> dict[str, str]:
    """"layer shape" -> "captured" / why it runs eagerly, over the runners' batch shapes."""
    out = {}
    for r in runners:
        for shape, status in getattr(r, "captures", {}).items():
            out[f"{r.layer} {'x'.join(map(str, shape))}"] = status
    return out


class SmallNet(nn.Module):
    """conv-BN-ReLU x 3 + pooled linear head: one elementwise layer, one affine layer."""

    def __init__(self) -> None:
        super().__init__()
        def block(i, o, s):
            return nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o), nn.ReLU())
        self.features = nn.Sequential(block(3, 16, 1), block(16, 32, 2), block(32, 64, 2))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max().clamp(min=1e-30))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest per-class correlation of two (C, K) importances."""
    a, b = a.double(), b.double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)).min())


class Checks(list):
    """Comparisons, each with its value and tolerance."""

    def add(self, name: str, value: float, tol: float, worse: str = "above") -> None:
        ok = value <= tol if worse == "above" else value >= tol
        self.append({"name": name, "value": value, "tol": tol, "ok": bool(ok)})

    def value(self, start: str) -> float:
        return next(c["value"] for c in self if c["name"].startswith(start))


def _against_cpu(ctx: Context, net, data, kw: dict, checks: Checks) -> None:
    """Both fills, float32 tails, the sampled estimator: device against CPU; the device's run
    under CHIP_FAST_SYNC_DEBUG=1 (a device read inside a unit raises). Then explain."""
    for fill in ("mean", "noise"):
        cpu = chip_fast.distill_all_classes(net, data, fill=fill, device="cpu", **kw)
        os.environ["CHIP_FAST_SYNC_DEBUG"] = "1"
        try:
            dev = chip_fast.distill_all_classes(net, data, fill=fill, device=ctx.device, **kw)
        finally:
            os.environ.pop("CHIP_FAST_SYNC_DEBUG")
        for layer in kw["layers"]:
            checks.add(f"{fill} {layer} r max rel diff", _rel(cpu.r[layer], dev.r[layer]), 1e-4)
        checks.add(f"{fill} paths differ", float(cpu.settings["paths"] != dev.settings["paths"]),
                   0)
    imp = chip_fast.distill_all_classes(net, data, device="cpu", **kw)
    maps_cpu = chip_fast.explain(net.to("cpu"), imp, data[0][:4], [0, 1, 2, 3])
    maps_dev = chip_fast.explain(net.to(ctx.device), imp, data[0][:4].to(ctx.device),
                                 [0, 1, 2, 3]).cpu()
    checks.add("explain max abs diff", float((maps_cpu - maps_dev).abs().max()), 1e-4)


def _control_against_cpu(ctx: Context, net, data, kw: dict, checks: Checks) -> None:
    """The view-slope control variate (slopes by autograd, its sums beside the kernels) on the
    device against the CPU, the device's run under CHIP_FAST_SYNC_DEBUG=1."""
    kw = {**kw, "layers": ["features.1"], "control": "view_slopes", "fill": "zero"}
    cpu = chip_fast.distill_all_classes(net, data, device="cpu", **kw)
    os.environ["CHIP_FAST_SYNC_DEBUG"] = "1"
    try:
        dev = chip_fast.distill_all_classes(net, data, device=ctx.device, **kw)
    finally:
        os.environ.pop("CHIP_FAST_SYNC_DEBUG")
    checks.add("view slopes features.1 r max rel diff", _rel(cpu.r["features.1"],
                                                             dev.r["features.1"]), 1e-4)
    checks.add("view slopes features.1 coefficients max rel diff",
               _rel(torch.tensor(cpu.settings["control_coefficients"]["features.1"]),
                    torch.tensor(dev.settings["control_coefficients"]["features.1"])), 1e-3)


def _defaults(ctx: Context, net, data, kw: dict, checks: Checks) -> None:
    """The default settings on the device (bf16 tails, the exact estimator where it applies):
    twice with the same seed, bit-identical; the exact layer against the CPU; the sampled
    layer against float32 CPU tails by correlation."""
    defaults = {**kw, "tail_dtype": "auto", "estimator": "auto", "fill": "mean"}
    with tf32_off():
        auto, again = (chip_fast.distill_all_classes(net, data, device=ctx.device, **defaults)
                       for _ in range(2))
        cpu = chip_fast.distill_all_classes(net, data, device="cpu",
                                            **{**defaults, "tail_dtype": "float32"})
    same = all(torch.equal(auto.r[l], again.r[l]) and torch.equal(auto.weights[l],
                                                                   again.weights[l])
               for l in kw["layers"])
    checks.add("same seed twice on the device: results differ", float(not same), 0)
    checks.add("exact estimator features.2 r max rel diff",
               _rel(cpu.r["features.2"], auto.r["features.2"]), 1e-4)
    checks.add("default (bf16) tails: smallest class r correlation, features.1",
               _corr(cpu.r["features.1"], auto.r["features.1"]), 0.99, worse="below")


def correctness(ctx: Context) -> dict:
    """The device against the CPU at the same seed (same masks, fill noise to float32 rounding),
    TF32 off inside every comparison (PyTorch runs convolutions in TF32 by default: 1e-3 off,
    the size of what a comparison must find), each with its tolerance; a failed comparison
    makes the step fail, the others still run. Graph captures per batch shape recorded."""
    torch.manual_seed(0)
    net = SmallNet().eval()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(20, 3, 32, 32, generator=g), torch.arange(20) % 10)
    kw = dict(layers=["features.1", "features.2"], samples_per_class=128 if ctx.quick else 512,
              seed=3, progress=False, tail_dtype="float32", estimator="sampled")
    checks = Checks()
    with tail_runners() as runners:
        with tf32_off():
            _against_cpu(ctx, net, data, kw, checks)
            _control_against_cpu(ctx, net, data, kw, checks)
        _defaults(ctx, net, data, kw, checks)
    net.to("cpu")
    graphs = captures(runners)
    bad = [c for c in checks if not c["ok"]]
    worst = max((c for c in checks if "rel diff" in c["name"]), key=lambda c: c["value"])
    summary = (f"{len(checks) - len(bad)}/{len(checks)} comparisons within tolerance, TF32 off; "
               f"worst r rel diff {worst['value']:.1e} (tol {worst['tol']:.0e}, "
               f"{worst['name']}); explain {checks.value('explain'):.1e}; same seed twice "
               f"{'identical' if not checks.value('same seed') else 'DIFFERENT'}; bf16 r corr "
               f"{checks.value('default (bf16)'):.4f}; graphs captured "
               f"{sum(v == 'captured' for v in graphs.values())}/{len(graphs)} shapes")
    if bad:
        summary += "; over tolerance: " + ", ".join(f"{c['name']} {c['value']:.2e}" for c in bad)
    return {"status": "fail" if bad else "ok", "summary": summary, "checks": list(checks),
            "graphs": graphs, "tf32_in_comparisons": False}


def launches(ctx: Context) -> dict:
    """Host work per tail batch (tools/launch_count.py): on CUDA the launch calls the profiler
    sees; on a CPU the kernel path under Triton's interpreter (the GPU's host work)."""
    from tools.launch_count import per_batch
    backend = "auto" if ctx.cuda else "triton"
    old = os.environ.get("CHIP_FAST_BACKEND")
    os.environ["CHIP_FAST_BACKEND"] = backend
    try:
        counts = per_batch(ctx.device.type, sizes=(16, 32) if ctx.quick else (64, 128))
    finally:
        os.environ.pop("CHIP_FAST_BACKEND") if old is None else os.environ.update(
            CHIP_FAST_BACKEND=old)
    # Triton launches, tail calls (one graph replay) and the aten ops that launch work; on CUDA
    # also the launch calls CUPTI saw, which count where the estimate misses something.
    launched = counts["triton_launches"] + counts["tail_calls"] + counts["launching_ops"]
    how = "Triton + tail + launching aten ops" + ("" if ctx.cuda else ", interpreter")
    if ctx.cuda and counts["cuda_launch_calls"] > launched:
        launched, how = counts["cuda_launch_calls"], "CUDA launch calls (profiler)"
    counts["launches_per_batch"] = launched
    return {"status": "ok", "summary": f"{launched:.1f} launches per tail batch ({how}); "
            f"{counts['aten_ops']:.1f} aten ops outside the tail, {counts['triton_launches']:.1f} "
            f"Triton launches, {counts['tail_calls']:.0f} tail call", **counts}


def _job(ctx: Context, model, data, layer: str, **settings) -> DistillJob:
    job = DistillJob(model, data, [layer], DistillSettings(**settings))
    job.measure_fill_statistics()
    return job


def _run(job: DistillJob, fresh_state: bool = False) -> float:
    """Seconds of the job's units; ``fresh_state``: run them all again on the same job (its
    graphs, kernels and views warm)."""
    from tools.launch_count import rerun
    sync(job.device)
    before = job.work_seconds
    if fresh_state:
        rerun(job)
    else:
        job.run_pending(job.state.pending())
    sync(job.device)
    return job.work_seconds - before


def _bare_tail(job: DistillJob, layer: str, n_batches: int) -> float:
    """The job's own TailRunner (same dtype, layout, graphs) on n full batches of what it runs
    on (the layer's activations, or the maps after a chain_per_view chain), nothing else."""
    runner = job.runner.tails[layer]
    batch = job.settings.batch_size
    split = job.runner.split
    view = job.source.load(job.plan.classes[0], 0)[None].to(job.device)
    with torch.inference_mode():
        acts = job.runner._unit_input(layer, split.activation(split.run_prefix(view), layer))
        x = runner.buffer((batch, *acts.shape[1:]))
        if x is None:
            x = acts.expand(batch, *acts.shape[1:]).contiguous(
                memory_format=torch.channels_last)
        else:
            x.copy_(acts.expand(batch, *acts.shape[1:]))
        rows = torch.zeros(batch, dtype=torch.long, device=job.device)
        for _ in range(3):
            runner(x, {}, rows)
        sync(job.device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            runner(x, {}, rows)
        sync(job.device)
    return time.perf_counter() - t0


def _per_unit_s(job: DistillJob, layer: str) -> float:
    """What the units do besides their batches, warm: rows, views' prefix (or the cache) and
    the baseline pass, over all the job's units. The bare tail has none of it."""
    runner = job.runner
    sync(job.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for unit in job.plan.units:
            rows, pending = runner.prepare(job.plan, unit)
            inputs, prefix_out, _ = runner._inputs(job.plan, rows, pending, unit.group,
                                                   job.state.mu)
            if job.settings.baseline == "view":
                runner.terms.baseline(layer, inputs[layer], prefix_out, rows.key_cls)
    sync(job.device)
    return time.perf_counter() - t0


def _profiled(job: DistillJob) -> dict:
    """Device busy share and pageable copies of a warm run under the profiler (CUDA)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = _run(job, fresh_state=True)
    events = prof.events()
    busy = sum(e.device_time for e in events
               if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    pageable = sum("Pageable" in e.name for e in events)
    return {"profiled_wall_s": wall, "device_s": busy, "busy_share": busy / max(wall, 1e-9),
            "pageable_copies": pageable}


def _kernel_compiles() -> int:
    """Compiled variants held by the chip_fast Triton kernels (a recompile adds one)."""
    import importlib
    import pkgutil
    import chip_fast.kernels as kernels
    n = 0
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"chip_fast.kernels.{info.name}")
        for obj in vars(mod).values():
            for per_device in getattr(obj, "device_caches", {}).values():
                n += len(per_device[0])   # (kernel cache, ...) in Triton 3.x
    return n


def overhead(ctx: Context) -> dict:
    """MobileNetV2 features.14.conv.0 at the default batch and paths: a first run, a warmed
    second run of the same job (its graphs and kernels warm), the bare tail over the same
    batches, then a call that changes only the sample count and the seed."""
    layer = "features.14.conv.0"
    classes, samples = (2, 256) if ctx.quick else (16, 2048)
    model = ctx.model("mobilenet_v2")
    images = torch.randn(classes * 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(classes * 2) % classes)
    # the default paths: the 14x14 layer's depthwise chain runs once per view (chain_per_view)
    kw = dict(samples_per_class=samples, classes_per_unit=8)
    with tail_runners() as runners:
        job = _job(ctx, model, data, layer, **kw)
        first_s = _run(job)
        warm_s = _run(job, fresh_state=True)
        batch = job.settings.batch_size
        n_batches = classes * samples // batch
        bare_s = _bare_tail(job, layer, n_batches)
        per_unit_s = _per_unit_s(job, layer)
        compiled = _kernel_compiles()
        changed = _job(ctx, model, data, layer, **{**kw, "seed": 1,
                                                   "samples_per_class": samples + batch})
        changed_s = _run(changed)
        recompiles = _kernel_compiles() - compiled
    graphs = captures(runners)
    out = {"layer": layer, "batch": batch, "samples": classes * samples, "first_s": first_s,
           "warm_s": warm_s, "bare_tail_s": bare_s, "overhead": warm_s / bare_s - 1,
           "per_unit_s": per_unit_s, "overhead_batches": (warm_s - per_unit_s) / bare_s - 1,
           "us_per_network": warm_s / (classes * samples) * 1e6,
           "samples_per_s": classes * samples / warm_s, "first_call_extra_s": first_s - warm_s,
           "changed_call_extra_s": changed_s - warm_s * (samples + batch) / samples,
           "changed_call_recompiles": recompiles, "graphs": graphs}
    if ctx.cuda:
        out.update(_profiled(job))
    summary = (f"{out['samples_per_s']:.0f} samples/s warm, {out['us_per_network']:.2f} us per "
               f"network; engine {warm_s:.2f} s vs bare tail {bare_s:.2f} s over {n_batches} "
               f"batches of {batch}: overhead {out['overhead'] * 100:.0f}% (per-unit prefix "
               f"and baseline {per_unit_s:.2f} s; the batches alone "
               f"{out['overhead_batches'] * 100:.0f}%); first run "
               f"{out['first_call_extra_s']:+.2f} s; new N and seed "
               f"{out['changed_call_extra_s']:+.2f} s, {recompiles} recompiles")
    if "busy_share" in out:
        summary += (f"; device busy {out['busy_share'] * 100:.0f}%, "
                    f"{out['pageable_copies']} pageable copies")
    return {"status": "ok", "summary": summary, **out}


def affine(ctx: Context) -> dict:
    """MobileNetV2 features.18 (affine tail): sampled at the affine path's batch, and exact."""
    model = ctx.model("mobilenet_v2")
    classes, samples = (4, 1024) if ctx.quick else (64, 16384)
    images = torch.randn(classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(classes))
    out = {}
    for estimator in ("sampled", "auto"):
        job = _job(ctx, model, data, "features.18", samples_per_class=samples,
                   estimator=estimator)
        _run(job)
        seconds = _run(job, fresh_state=True)
        out[job.plan.estimators["features.18"]] = {
            "units_s": seconds, "samples_per_s": classes * samples / seconds}
    return {"status": "ok", "summary": f"features.18 sampled "
            f"{out['sampled']['samples_per_s']:.0f} samples/s, exact "
            f"{out['exact']['samples_per_s']:.0f} samples/s ({classes} x {samples})",
            "path": "affine", "samples": classes * samples, **out}

