"""Distillation throughput (perturbed networks per second) next to the bare tail forward.

    python -m pytest bench/bench_distill.py --benchmark-only

Both run MobileNetV2 at features.16 over CHIP_BENCH_CLASSES (100) classes x CHIP_BENCH_SAMPLES
(512) samples at the same batch size; their ratio is the cost of perturbation, statistics,
prefix and solve on top of the forwards that any perturbation method must pay.
"""
from __future__ import annotations

import os

import pytest
import torch
import torchvision

import chip_fast
from chip_fast.models.split import SplitModel

CLASSES = int(os.environ.get("CHIP_BENCH_CLASSES", "100"))
SAMPLES = int(os.environ.get("CHIP_BENCH_SAMPLES", "512"))
BATCH = int(os.environ.get("CHIP_BENCH_BATCH", "256"))
LAYER = "features.16"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def model():
    return torchvision.models.mobilenet_v2().eval().to(DEVICE)


def test_distill_throughput(benchmark, model):
    images = torch.randn(CLASSES, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(CLASSES)
    benchmark.extra_info.update(samples=CLASSES * SAMPLES, device=str(DEVICE))
    benchmark.pedantic(lambda: chip_fast.distill_all_classes(
        model, (images, labels), [LAYER], samples_per_class=SAMPLES, augment=2,
        batch_size=BATCH, progress=False), rounds=1, iterations=1)


def test_tail_forward_same_samples(benchmark, model):
    """The bare tail as the pipeline runs it: the same TailRunner (folded batch norms, bf16
    channels-last weights on CUDA, CUDA graphs), the same input dtype and layout, warmed up."""
    from chip_fast.distill.plan import DistillSettings, resolve_settings
    from chip_fast.distill.tails import TailRunner
    split = SplitModel(model, [LAYER])
    settings = resolve_settings(DistillSettings(batch_size=BATCH), DEVICE)
    dtype = torch.bfloat16 if settings.tail_dtype == "bfloat16" else torch.float32
    tail = TailRunner(split, LAYER, DEVICE, dtype)
    with torch.inference_mode():
        x = torch.randn(2, 3, 224, 224, device=DEVICE).contiguous(memory_format=torch.channels_last)
        a = split.activation(split.run_prefix(x), LAYER)
        rows = torch.arange(BATCH, device=DEVICE) % 2
        batch = tail.buffer((BATCH, *a.shape[1:]))
        if batch is None:
            batch = a[rows].to(dtype).contiguous(memory_format=torch.channels_last)
        else:
            batch.copy_(a[rows])
        for _ in range(3):
            tail(batch, {}, rows)
    steps = CLASSES * SAMPLES // BATCH

    def run():
        with torch.inference_mode():
            for _ in range(steps):
                tail(batch, {}, rows)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()

    benchmark.extra_info.update(samples=steps * BATCH, device=str(DEVICE))
    benchmark.pedantic(run, rounds=1, iterations=1)
