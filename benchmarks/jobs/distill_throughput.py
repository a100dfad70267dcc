"""Distillation throughput (perturbed networks per second) next to the bare tail forward.

    python -m benchmarks.jobs distill_throughput [--classes 100] [--samples 512] [--batch 256]

Both run MobileNetV2 (random weights) at features.16 over --classes classes x --samples samples
at the same batch size; their ratio is the cost of perturbation, statistics, prefix and solve on
top of the forwards that any perturbation method must pay. The defaults can also be set by
CHIP_BENCH_CLASSES, CHIP_BENCH_SAMPLES and CHIP_BENCH_BATCH. Writes
benchmarks/results/distill_throughput_<cpu|cuda>.json.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

import chip_fast
from chip_fast.distill.settings import resolve_settings
from chip_fast.distill.tails import TailRunner
from chip_fast.models.split import SplitModel

from benchmarks.jobs.record import RESULTS, write_result

LAYER = "features.16"


def distill_seconds(model, device, classes: int, samples: int, batch: int) -> float:
    images = torch.randn(classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    chip_fast.distill_all_classes(model, (images, torch.arange(classes)), [LAYER],
                                  samples_per_class=samples, augment=2, batch_size=batch,
                                  progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def tail_seconds(model, device, steps: int, batch: int) -> float:
    """The bare tail as the pipeline runs it: the same TailRunner (folded batch norms, bf16
    channels-last weights on CUDA, CUDA graphs), the same input dtype and layout, warmed up."""
    split = SplitModel(model, [LAYER])
    settings = resolve_settings(chip_fast.DistillSettings(batch_size=batch), device)
    dtype = torch.bfloat16 if settings.tail_dtype == "bfloat16" else torch.float32
    tail = TailRunner(split, LAYER, device, dtype)
    with torch.inference_mode():
        x = torch.randn(2, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
        a = split.activation(split.run_prefix(x), LAYER)
        rows = torch.arange(batch, device=device) % 2
        inputs = tail.buffer((batch, *a.shape[1:]))
        if inputs is None:
            inputs = a[rows].to(dtype).contiguous(memory_format=torch.channels_last)
        else:
            inputs.copy_(a[rows])
        for _ in range(3):
            tail(inputs, {}, rows)
        t0 = time.perf_counter()
        for _ in range(steps):
            tail(inputs, {}, rows)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=int(env("CHIP_BENCH_CLASSES", "100")))
    ap.add_argument("--samples", type=int, default=int(env("CHIP_BENCH_SAMPLES", "512")))
    ap.add_argument("--batch", type=int, default=int(env("CHIP_BENCH_BATCH", "256")))
    ap.add_argument("--out", default=str(RESULTS), help="folder of the result file")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torchvision.models.mobilenet_v2().eval().to(device)
    distill_s = distill_seconds(model, device, args.classes, args.samples, args.batch)
    steps = args.classes * args.samples // args.batch
    tail_s = tail_seconds(model, device, steps, args.batch)
    samples = args.classes * args.samples
    result = {"device": str(device), "torch": torch.__version__, "layer": LAYER,
              "classes": args.classes, "samples_per_class": args.samples, "batch": args.batch,
              "distill_s": distill_s, "distill_samples_per_s": samples / distill_s,
              "tail_s": tail_s, "tail_samples_per_s": steps * args.batch / tail_s,
              "distill_over_tail": (distill_s / samples) / (tail_s / (steps * args.batch)),
              "command": f"python -m benchmarks.jobs distill_throughput --classes {args.classes} "
                         f"--samples {args.samples} --batch {args.batch}"}
    write_result(f"distill_throughput_{device.type}", result, root=args.out)
