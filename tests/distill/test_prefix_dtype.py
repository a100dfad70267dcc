"""The prefix's dtype: "auto" runs the prefix (photo -> the layers' activations) in bfloat16 on
CPUs with native bf16 and in float32 elsewhere (tests/distill/test_tail_dtype.py); a bfloat16
prefix gives the float32 prefix's importance up to bfloat16's rounding (on MobileNetV2 far
inside the seeds' spread: docs/stability.md), the file records the dtype used, and a checkpoint
of one dtype is never resumed into a job of the other."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.distill.job import DistillJob
from chip_fast.distill.settings import DistillSettings
from chip_fast.evaluation.sanity import replay_settings
from chip_fast.models.split import SplitModel


def test_a_wrong_dtype_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="prefix_dtype must be one of .*bfloat16.*float16"):
        DistillSettings(prefix_dtype="float16")


class Net(nn.Module):
    """Two convolutions before the cut (one fused with its ReLU on a CPU), a non-affine tail."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 6, 3, padding=1))
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():   # a batch norm that does something
        net.stem[1].running_mean.uniform_(-0.5, 0.5)
        net.stem[1].running_var.uniform_(0.5, 2.0)
    return net


def test_a_bfloat16_prefix_returns_float32_close_to_the_float32_prefix(net):
    split = SplitModel(net, ["stem"])
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(2)).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        want = split.run_prefix(x)
        got = split.run_prefix(x, torch.bfloat16)
    assert got.keys() == want.keys()
    for name, a in want.items():
        b = got[name]
        assert b.dtype == torch.float32 and b.shape == a.shape and torch.isfinite(b).all()
        assert not torch.equal(a, b)   # the bfloat16 arithmetic really ran
        assert (a - b).norm() < 0.02 * a.norm()
    # the model and the split's own prefix keep their float32 weights (maps read float32)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(p.dtype == torch.float32 for p in split.prefix.parameters())
    with torch.inference_mode():
        assert all(torch.equal(split.run_prefix(x)[k], v) for k, v in want.items())


def test_a_bfloat16_prefix_gives_the_float32_importance(net):
    gen = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 3, 8, 8, generator=gen), torch.arange(12) % 3)
    runs = {dtype: chip_fast.distill_all_classes(net, data, ["stem"], progress=False,
                                                 samples_per_class=512, prefix_dtype=dtype,
                                                 tail_dtype="float32", device="cpu")
            for dtype in ("float32", "bfloat16")}
    assert {d: imp.settings["prefix_dtype"] for d, imp in runs.items()} == {
        "float32": "float32", "bfloat16": "bfloat16"}
    a, b = runs["float32"].weights["stem"], runs["bfloat16"].weights["stem"]
    assert torch.isfinite(b).all()
    assert not torch.equal(a, b)
    for c in range(3):
        assert torch.corrcoef(torch.stack([a[c], b[c]]))[0, 1] > 0.99
    assert (a - b).norm() < 0.05 * a.norm()


def test_a_checkpoint_of_one_prefix_dtype_is_not_another_job(net):
    data = (torch.randn(6, 3, 8, 8), torch.arange(6) % 3)
    identity = {dtype: DistillJob(net, data, ["stem"], DistillSettings(
        samples_per_class=16, prefix_dtype=dtype)).identity
        for dtype in ("float32", "bfloat16")}
    assert identity["float32"] != identity["bfloat16"]


def test_a_file_from_before_the_setting_replays_with_a_float32_prefix(net):
    data = (torch.randn(6, 3, 8, 8), torch.arange(6) % 3)
    imp = chip_fast.distill_all_classes(net, data, ["stem"], progress=False,
                                        samples_per_class=16, prefix_dtype="bfloat16")
    assert replay_settings(imp)["prefix_dtype"] == "bfloat16"
    old = {k: v for k, v in imp.settings.items() if k not in ("prefix_dtype", "control")}
    before = replay_settings(chip_fast.Importance(**{**imp.__dict__, "settings": old}))
    assert (before["prefix_dtype"], before["control"]) == ("float32", "none")
