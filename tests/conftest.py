"""Shared fixtures: the real data of ../shared/data (skipped where absent) and tiny models; the
plain helpers behind them are in ``tests/helpers.py``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before any
# module imports triton: some test modules import it indirectly (torchvision, torch._dynamo)
# at collection, before a kernel test's own kernel_helpers could set it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.helpers import SAMPLE_TRAIN, WEIGHTS, TinyNet  # noqa: E402 (after the choice)


@pytest.fixture(scope="session")
def mobilenet_v2():
    if not WEIGHTS.is_file():
        pytest.skip(f"real MobileNetV2 weights not found at {WEIGHTS} (../shared/data is absent)")
    import torchvision
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def sample_train() -> Path:
    if not SAMPLE_TRAIN.is_dir():
        pytest.skip(f"ImageNet sample photos not found at {SAMPLE_TRAIN} (../shared/data is absent)")
    return SAMPLE_TRAIN


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_data():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(12, 3, 16, 16, generator=g)
    labels = torch.arange(12) % 6
    return images, labels
