"""Shared fixtures: the real data of ../shared/data (skipped where absent) and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Without CUDA the Triton kernels run in Triton's interpreter, which must be chosen before any
# module imports triton: some test modules import it indirectly (torchvision, torch._dynamo)
# at collection, before a kernel test's own kernel_helpers could set it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet1k.pth"
SAMPLE_TRAIN = SHARED / "imagenet-sample" / "train"
VAL_DEV = SHARED / "imagenet-val-dev"


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


class TinyNet(nn.Module):
    """A small convolutional classifier with named stages, like torchvision's."""

    def __init__(self, classes: int = 6, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


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
