"""What one tail batch of the engine costs the host: aten ops, Triton launches and (on CUDA)
runtime launch calls per batch, counted with torch.profiler.

    python -m tools.launch_count [--device cpu|cuda] [--backend auto|torch|triton]  (repo root)

Two jobs that differ only in their number of batches (one unit each, every batch full) are
profiled around a warm second ``run_pending`` (the first captured the graphs and compiled the
kernels, outside the profiler); the difference of their counts over the difference of their
batches is the cost of one batch, with everything paid once per unit or job (the prefix, the
baseline, graph capture, index plans, the readback) cancelled out. Ops inside the tail
(``TailRunner.__call__``, one CUDA-graph replay on a GPU) and inside a Triton launch (the
interpreter's own copies on a CPU) are not counted as aten ops; each tail call and each Triton
launch counts once. ``CHIP_FAST_BACKEND=triton`` on a CPU runs the engine's kernel path under
Triton's interpreter, so its counts are the GPU's host work per batch.
Used by tests/tools/test_launch_count.py (the counts are kept there) and tools/gpu_engine_check.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
from typing import Iterator

import torch
from torch import nn

TAIL, KERNEL = "chip_fast.tail", "chip_fast.kernel"
# aten ops that launch no device work (views, allocation, dtype no-ops); the others launch
# about one kernel each on CUDA.
NO_LAUNCH = {"aten::slice", "aten::select", "aten::view", "aten::alias", "aten::as_strided",
             "aten::unsqueeze", "aten::squeeze", "aten::expand", "aten::empty",
             "aten::empty_strided", "aten::to", "aten::detach", "aten::split", "aten::t",
             "aten::transpose", "aten::permute", "aten::reshape", "aten::flatten",
             "aten::_reshape_alias", "aten::contiguous", "aten::resolve_conj", "aten::lift_fresh",
             "aten::record_stream", "aten::narrow", "aten::unbind", "aten::chunk",
             "aten::split_with_sizes"}
# CUDA runtime/driver calls that put work on a stream.
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


class CountNet(nn.Module):
    """conv-ReLU x 3, pooled, linear: ``features.2`` has an elementwise tail of real ops."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class _Marked:
    """Stands in for a @triton.jit kernel: each ``kernel[grid](...)`` runs inside a profiler
    range, so the interpreter's copies are not taken for the engine's ops."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            with torch.profiler.record_function(KERNEL):
                return launch(*args, **kwargs)
        return run

    def __getattr__(self, name):
        return getattr(self.kernel, name)


@contextlib.contextmanager
def marked() -> Iterator[None]:
    """Tail calls and Triton launches inside named profiler ranges."""
    from chip_fast.distill import tails
    import chip_fast.kernels as kernels
    patched = []
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"chip_fast.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and type(obj).__name__ in ("JITFunction",
                                                                    "InterpretedFunction"):
                patched.append((mod, name, obj))
                setattr(mod, name, _Marked(obj))
    call = tails.TailRunner.__call__

    def tail_call(self, *args, **kwargs):
        with torch.profiler.record_function(TAIL):
            return call(self, *args, **kwargs)
    tails.TailRunner.__call__ = tail_call
    try:
        yield
    finally:
        tails.TailRunner.__call__ = call
        for mod, name, obj in patched:
            setattr(mod, name, obj)


def classify(events) -> dict[str, int]:
    """Top-level aten ops outside the marked ranges (and those of them that launch device
    work), the marked ranges, and launch calls."""
    out = {"aten_ops": 0, "launching_ops": 0, "tail_calls": 0, "triton_launches": 0,
           "cuda_launch_calls": 0}
    for e in events:
        if e.name == TAIL:
            out["tail_calls"] += 1
        elif e.name == KERNEL:
            out["triton_launches"] += 1
        elif e.name in LAUNCH_CALLS:
            out["cuda_launch_calls"] += 1
        elif e.name.startswith("aten::"):
            parent, inside = e.cpu_parent, False
            while parent is not None and not inside:
                inside = parent.name.startswith("aten::") or parent.name in (TAIL, KERNEL)
                parent = parent.cpu_parent
            out["aten_ops"] += not inside
            out["launching_ops"] += not inside and e.name not in NO_LAUNCH
    return out


def rerun(job) -> None:
    """Run all the job's units again on the same job (its views, graphs and kernels warm)."""
    from chip_fast.distill.state import DistillState
    mu, sigma = job.state.mu, job.state.sigma
    job.state = DistillState(job.plan)
    job.state.set_fill_statistics(mu, sigma)
    job.run_pending(job.state.pending())


def count_job(model: nn.Module, data, layer: str, samples: int, device: torch.device,
              **settings) -> tuple[dict[str, int], int]:
    """(counts over one job's warm second ``run_pending``, its tail batches); one unit, full
    batches. The first run captures the graphs: no capture happens under the profiler."""
    from chip_fast.distill.job import DistillJob
    from chip_fast.distill.settings import DistillSettings
    batch = settings.setdefault("batch_size", 16)
    classes = len(set(data[1].tolist()))
    job = DistillJob(model.to(device), data, [layer], DistillSettings(
        samples_per_class=samples, samples_per_unit=samples, classes_per_unit=classes,
        tail_path="elementwise", **settings))
    job.measure_fill_statistics()
    job.run_pending(job.state.pending())
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with marked(), torch.profiler.profile(activities=activities) as prof:
        rerun(job)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    job.close()
    return classify(prof.events()), classes * samples // batch


def per_batch(device: str = "cpu", sizes: tuple[int, int] = (32, 64), **settings
              ) -> dict[str, float]:
    """Counts per tail batch (see the module doc) of CountNet at ``features.2``."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = CountNet().eval()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(8, 3, 8, 8, generator=g), torch.arange(8) % 4)
    (a, na), (b, nb) = (count_job(model, data, "features.2", n, dev, **settings) for n in sizes)
    out = {k: (b[k] - a[k]) / (nb - na) for k in a}
    out["batches"] = nb - na
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default=os.environ.get("CHIP_FAST_BACKEND", "auto"))
    ap.add_argument("--response", default="logit")
    args = ap.parse_args()
    os.environ["CHIP_FAST_BACKEND"] = args.backend
    if args.backend == "triton" and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    print(json.dumps(per_batch(args.device, response=args.response)))


if __name__ == "__main__":
    main()
