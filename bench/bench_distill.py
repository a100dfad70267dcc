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
from chip_fast.split import SplitModel

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
    split = SplitModel(model, [LAYER])
    with torch.inference_mode():
        acts = split.run_prefix(torch.randn(2, 3, 224, 224, device=DEVICE))
        a = split.activation(acts, LAYER)
        batch = a[torch.arange(BATCH, device=DEVICE) % 2].contiguous()
    rows = torch.zeros(BATCH, dtype=torch.long, device=DEVICE)
    steps = CLASSES * SAMPLES // BATCH

    def run():
        with torch.inference_mode():
            for _ in range(steps):
                split.run_tail(LAYER, batch, acts, rows)
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()

    benchmark.extra_info.update(samples=steps * BATCH, device=str(DEVICE))
    benchmark.pedantic(run, rounds=1, iterations=1)
