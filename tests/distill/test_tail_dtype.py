"""The tails' dtype: "auto" picks bfloat16 where the device multiplies it in hardware (CUDA, CPUs
with AVX512-BF16 or AMX) and float32 elsewhere; a bfloat16 tail gives the float32 tail's
importance up to bfloat16's rounding (on MobileNetV2 far inside the seeds' spread:
docs/stability.md), and the file records the dtype used."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.distill import settings as settings_module
from chip_fast.distill.settings import DistillSettings, resolve_settings


@pytest.mark.parametrize("native, expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_follows_the_cpus_bf16_support(monkeypatch, native, expected):
    """The tails' and the prefix's (tests/distill/test_prefix_dtype.py) "auto" alike on a CPU;
    on CUDA the prefix stays float32 until it is measured there."""
    monkeypatch.setattr(settings_module, "cpu_has_native_bf16", lambda: native)
    cpu = resolve_settings(DistillSettings(), torch.device("cpu"))
    assert (cpu.tail_dtype, cpu.prefix_dtype) == (expected, expected)
    cuda = resolve_settings(DistillSettings(), torch.device("cuda"))
    assert (cuda.tail_dtype, cuda.prefix_dtype) == ("bfloat16", "float32")
    forced = resolve_settings(DistillSettings(tail_dtype="float32", prefix_dtype="bfloat16"),
                              torch.device("cpu"))
    assert (forced.tail_dtype, forced.prefix_dtype) == ("float32", "bfloat16")


def test_the_detection_answers_with_a_bool():
    assert isinstance(settings_module.cpu_has_native_bf16(), bool)


class Net(nn.Module):
    """A 4-channel layer whose tail (conv, ReLU, pool, linear) is not affine, so it is sampled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.body(self.stem(x))), 1))


def test_a_bfloat16_tail_gives_the_float32_importance():
    torch.manual_seed(0)
    net = Net().eval()
    gen = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 3, 8, 8, generator=gen), torch.arange(12) % 3)
    runs = {dtype: chip_fast.distill_all_classes(net, data, ["stem"], progress=False,
                                                 samples_per_class=512, tail_dtype=dtype,
                                                 device="cpu")
            for dtype in ("float32", "bfloat16")}
    assert {d: imp.settings["tail_dtype"] for d, imp in runs.items()} == {
        "float32": "float32", "bfloat16": "bfloat16"}
    a, b = runs["float32"].weights["stem"], runs["bfloat16"].weights["stem"]
    assert torch.isfinite(b).all()
    assert not torch.equal(a, b)   # the bfloat16 arithmetic really ran
    for c in range(3):
        assert torch.corrcoef(torch.stack([a[c], b[c]]))[0, 1] > 0.99
    assert (a - b).norm() < 0.05 * a.norm()
