"""The distillation engine on a GPU: correctness against the CPU, and throughput against the
floors that bound it. Run by tools/gpu_check.sh; with ``--device cpu --quick`` it runs here as a
smoke test of the script itself.

    python -m tools.gpu_engine_check --out DIR [--device cuda] [--quick]    (from the repo root)

1. Correctness: a small CNN distilled on the GPU and on the CPU (same seed: same masks, same
   fill numbers to float32 rounding) gives the same statistics r within the tail's precision,
   with torch.cuda.set_sync_debug_mode("error") around the hot loop (CHIP_FAST_SYNC_DEBUG=1):
   any device read between a unit's first and last batch raises. Maps of explain agree.
2. Overhead: MobileNetV2 features.14.conv.0, batch 256, bf16 channels-last tails: the units'
   time against the bare tail (the same TailRunner, same dtype and layout, same number of
   batches, warmed up) in the same run. Target: under 10%.
3. Affine path: MobileNetV2 features.18 samples/s (no tail forward at all).
4. VGG16 conv5_3 (random weights): the per-sample slope between two job sizes (fixed costs
   excluded), projected to 1e8 perturbed networks, next to the FLOP floor at the measured bf16
   matmul rate and the HBM traffic of the perturbed activations; the larger floor names the
   bound.
5. The whole ImageNet job: JPEG decode rate (nvJPEG on the GPU, PIL on the CPUs) and the prefix
   rate of 1.28 M photos (~31 GFLOP each through conv5_3), with 4.
Writes engine_check.json and engine_check.md into --out.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

import chip_fast
from chip_fast import DistillSettings
from chip_fast.util.cpus import usable_cpus
from chip_fast.distill.job import DistillJob
from chip_fast.models.split import SplitModel
from chip_fast.distill.tails import TailRunner


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SmallNet(nn.Module):
    """conv-BN-ReLU x 3 + pooled linear head: one elementwise layer, one affine layer."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1), nn.BatchNorm2d(o),  # noqa
                                              nn.ReLU())
        self.features = nn.Sequential(block(3, 16, 1), block(16, 32, 2), block(32, 64, 2))
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def correctness(device: torch.device, quick: bool) -> dict:
    torch.manual_seed(0)
    net = SmallNet().eval()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(20, 3, 32, 32, generator=g), torch.arange(20) % 10)
    kw = dict(layers=["features.1", "features.2"], samples_per_class=128 if quick else 512,
              seed=3, progress=False, tail_dtype="float32")
    out = {}
    for fill in ("mean", "noise"):
        cpu = chip_fast.distill_all_classes(net, data, fill=fill, device="cpu", **kw)
        os.environ["CHIP_FAST_SYNC_DEBUG"] = "1"
        try:
            gpu = chip_fast.distill_all_classes(net, data, fill=fill, device=device, **kw)
        finally:
            os.environ.pop("CHIP_FAST_SYNC_DEBUG")
        net.to("cpu")
        for layer in kw["layers"]:
            a, b = cpu.r[layer], gpu.r[layer]
            rel = float((a - b).abs().max() / a.abs().max())
            out[f"{fill} {layer} r max rel diff"] = rel
            assert rel < 1e-3, (fill, layer, rel)
            assert cpu.settings["paths"] == gpu.settings["paths"]
    imp = chip_fast.distill_all_classes(net, data, device="cpu", **kw)
    maps_cpu = chip_fast.explain(net, imp, data[0][:4], [0, 1, 2, 3])
    net.to(device)
    maps_gpu = chip_fast.explain(net, imp, data[0][:4].to(device), [0, 1, 2, 3]).cpu()
    net.to("cpu")
    out["explain max abs diff"] = float((maps_cpu - maps_gpu).abs().max())
    assert out["explain max abs diff"] < 1e-3
    return out


def overhead(device: torch.device, quick: bool) -> dict:
    """Units' time vs the bare tail at MobileNetV2 features.14.conv.0, batch 256."""
    model = torchvision.models.mobilenet_v2().eval().to(device)
    layer, batch = "features.14.conv.0", 256
    classes, samples = (2, 256) if quick else (16, 2048)
    images = torch.randn(classes * 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(classes * 2) % classes)
    settings = DistillSettings(samples_per_class=samples, batch_size=batch, augment=1)
    warm = DistillJob(model, data, [layer], DistillSettings(samples_per_class=batch,
                                                            batch_size=batch))
    warm.measure_fill_statistics()
    warm.run_pending(warm.state.pending())
    job = DistillJob(model, data, [layer], settings)
    job.measure_fill_statistics()
    sync(device)
    job.run_pending(job.state.pending())
    sync(device)
    units_s = job.work_seconds
    n_batches = classes * samples // batch
    split = job.runner.split
    dtype = torch.bfloat16 if job.settings.tail_dtype == "bfloat16" else torch.float32
    tail = TailRunner(split, layer, device, dtype)
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(images[:2].to(device)), layer)
        x = tail.buffer((batch, *acts.shape[1:]))
        if x is None:
            x = acts[torch.arange(batch) % 2].contiguous(memory_format=torch.channels_last)
        else:
            x.copy_(acts[torch.arange(batch, device=device) % 2])
        rows = torch.zeros(batch, dtype=torch.long, device=device)
        for _ in range(3):
            tail(x, {}, rows)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            tail(x, {}, rows)
        sync(device)
        bare_s = time.perf_counter() - t0
    return {"layer": layer, "batch": batch, "samples": classes * samples, "units_s": units_s,
            "bare_tail_s": bare_s, "overhead": (units_s - bare_s) / bare_s,
            "samples_per_s": classes * samples / units_s}


def affine_rate(device: torch.device, quick: bool) -> dict:
    model = torchvision.models.mobilenet_v2().eval().to(device)
    classes, samples = (4, 1024) if quick else (64, 16384)
    images = torch.randn(classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    job = DistillJob(model, (images, torch.arange(classes)), ["features.18"],
                     DistillSettings(samples_per_class=samples))
    job.measure_fill_statistics()
    job.run_pending(job.state.pending())
    sync(device)
    return {"layer": "features.18", "path": job.plan.paths["features.18"],
            "samples": classes * samples, "units_s": job.work_seconds,
            "samples_per_s": classes * samples / job.work_seconds}


def matmul_rate(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 512
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    sync(device)
    return 5 * 2 * n ** 3 / (time.perf_counter() - t0)


def vgg_projection(device: torch.device, quick: bool) -> dict:
    from torch.utils.flop_counter import FlopCounterMode
    model = torchvision.models.vgg16().eval().to(device)
    layer = "features.28"   # conv5_3; its ReLU and max-pool open the tail
    classes = 4 if quick else 16
    images = torch.randn(classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(classes))
    batch = 64 if quick else 1024

    def units_seconds(samples: int) -> float:
        job = DistillJob(model, data, [layer], DistillSettings(
            samples_per_class=samples, batch_size=batch, samples_per_unit=samples,
            classes_per_unit=classes, fill_stats_views=classes))
        job.measure_fill_statistics()
        sync(device)
        job.run_pending(job.state.pending())
        sync(device)
        return job.work_seconds

    small, large = (64, 192) if quick else (512, 2048)
    units_seconds(small)   # warm-up: kernels, graphs, cuDNN choices
    t_small, t_large = units_seconds(small), units_seconds(large)
    slope = (t_large - t_small) / (classes * (large - small))
    split = SplitModel(model, [layer])
    with torch.inference_mode():
        act = split.activation(split.run_prefix(images[:1].to(device)), layer)
        with FlopCounterMode(display=False) as counter:
            split.run_tail(layer, act, {}, torch.zeros(1, dtype=torch.long, device=device))
        with FlopCounterMode(display=False) as prefix_counter:
            split.run_prefix(images[:1].to(device))
    peak = matmul_rate(device)
    flops = counter.get_total_flops()
    total = 1e8
    hbm = 3.35e12 if device.type == "cuda" else 50e9      # H100 SXM HBM3; a CPU's DRAM
    bytes_per_sample = act[0].numel() * 2 * 2              # bf16 written once, read once
    floors = {"flops_s": total * flops / peak, "hbm_s": total * bytes_per_sample / hbm}
    return {"layer": f"vgg16 {layer} (conv5_3)", "slope_s_per_sample": slope,
            "projected_1e8_s": total * slope, "tail_gflop_per_sample": flops / 1e9,
            "prefix_gflop_per_photo": prefix_counter.get_total_flops() / 1e9,
            "matmul_tflops_measured": peak / 1e12, "floors_1e8": floors,
            "bound": max(floors, key=floors.get),
            "perturbed_bytes_per_sample": bytes_per_sample}


def imagenet_job(device: torch.device, vgg: dict, quick: bool) -> dict:
    """Decode and prefix rates of the 1.28M photos, with the perturbation part of 4."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((torch.rand(375, 500, 3) * 255).byte().numpy()).save(buf, "JPEG",
                                                                         quality=90)
    data = buf.getvalue()
    n = 32 if quick else 256
    t0 = time.perf_counter()
    for _ in range(n):
        Image.open(io.BytesIO(data)).convert("RGB").load()
    pil_rate = n / (time.perf_counter() - t0) * usable_cpus()
    gpu_rate = None
    if device.type == "cuda":
        from torchvision.io import decode_jpeg
        raw = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _ in range(n)]
        decode_jpeg(raw[:8], device=device)
        sync(device)
        t0 = time.perf_counter()
        decode_jpeg(raw, device=device)
        sync(device)
        gpu_rate = n / (time.perf_counter() - t0)
    photos = 1.28e6
    decode_rate = gpu_rate or pil_rate
    prefix_s = photos * vgg["prefix_gflop_per_photo"] * 1e9 / (vgg["matmul_tflops_measured"] * 1e12)
    return {"photos": photos, "pil_decode_per_s_all_cpus": pil_rate,
            "nvjpeg_decode_per_s": gpu_rate, "decode_s": photos / decode_rate,
            "prefix_floor_s": prefix_s, "perturbation_1e8_s": vgg["projected_1e8_s"],
            "projected_total_s": max(photos / decode_rate, prefix_s) + vgg["projected_1e8_s"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tools/results/gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--only", nargs="*", help="parts to run (default all)")
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result: dict = {"device": name, "torch": torch.__version__}
    parts = args.only or ["correctness", "overhead", "affine", "vgg", "imagenet"]
    for part in parts:
        t0 = time.perf_counter()
        if part == "correctness":
            result[part] = correctness(device, args.quick)
        elif part == "overhead":
            result[part] = overhead(device, args.quick)
        elif part == "affine":
            result[part] = affine_rate(device, args.quick)
        elif part == "vgg":
            result[part] = vgg_projection(device, args.quick)
        elif part == "imagenet" and "vgg" in result:
            result[part] = imagenet_job(device, result["vgg"], args.quick)
        print(f"== {part} ({time.perf_counter() - t0:.0f} s)\n"
              f"{json.dumps(result.get(part), indent=1)}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_check.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
