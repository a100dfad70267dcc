"""Projected time of the paper's full ImageNet run: 1e8 perturbed networks at VGG16's conv5_3.

    python bench/project_imagenet_run.py [--classes 16] [--samples 1024] [--batch-size 2048]

Random weights (timing does not depend on them). Distils a slice of the run, times it, and
projects the whole (1000 classes x 1e5 samples) from the measured samples/s. Also reports the
floor set by the tail's FLOPs at the device's measured dense bf16 matmul rate, so the gap
between the pipeline and the hardware is visible. Writes bench/results/imagenet_projection_*.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import chip_fast
from chip_fast.split import SplitModel

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 1e8
LAYER = "features.28"  # conv5_3 (its ReLU, features.29, is the tail's first operation)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul FLOP/s: the realistic ceiling for the tail's fully connected layers."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 5 * 2 * n ** 3 / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = torchvision.models.vgg16().eval().to(device)
    images = torch.randn(args.classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.classes)
    split = SplitModel(model, [LAYER])
    with torch.inference_mode():
        act = split.activation(split.run_prefix(images[:1].to(device)), LAYER)
        with FlopCounterMode(display=False) as counter:
            split.run_tail(LAYER, act, {}, torch.zeros(1, dtype=torch.long, device=device))
    tail_flops = counter.get_total_flops()
    kw = dict(samples_per_class=args.samples, batch_size=args.batch_size, progress=False,
              classes_per_unit=max(1, args.batch_size // 1024), samples_per_unit=1024)
    chip_fast.distill_all_classes(model, (images[:2], labels[:2]), [LAYER], **{**kw, "samples_per_class": 64})
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    chip_fast.distill_all_classes(model, (images, labels), [LAYER], **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rate = args.classes * args.samples / wall
    peak = matmul_rate(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "torch": torch.__version__, "layer": f"vgg16 {LAYER} (conv5_3)",
        "measured_samples": args.classes * args.samples, "wall_s": wall,
        "samples_per_s": rate, "projected_1e8_s": TOTAL / rate,
        "tail_gflop_per_sample": tail_flops / 1e9,
        "matmul_tflops_measured": peak / 1e12,
        "flop_floor_1e8_s": TOTAL * tail_flops / peak,
        "perturbed_activation_bytes_per_sample": act[0].numel() * 2,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"imagenet_projection_{device.type}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
