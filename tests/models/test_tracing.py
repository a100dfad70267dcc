"""Tracing (``chip_fast.models.tracing``): plain fx first; where it fails on a timm model, timm's
registry of modules fx must not trace into, so the model can still be cut into prefix and tails."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from chip_fast.models.split import SplitModel
from chip_fast.models.tracing import trace

timm = pytest.importorskip("timm", reason="timm models need: pip install 'chip-fast[timm]'")
from timm.layers import register_notrace_module  # noqa: E402


@register_notrace_module
class PoolIfLarge(nn.Module):
    """Data-dependent on the input's shape, as timm's VGG ConvMlp is: plain fx cannot trace it."""

    def forward(self, x):
        if x.shape[-1] > 4:
            x = nn.functional.adaptive_avg_pool2d(x, 4)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = PoolIfLarge()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).mean((2, 3)))


def test_timm_registry_traces_what_plain_fx_cannot():
    torch.manual_seed(0)
    model = Net().eval()
    with pytest.raises(Exception):
        fx.symbolic_trace(model)
    graph = trace(model)
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["conv", "act", "pool",
                                                                         "fc"]
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        acts, logits = SplitModel(model, ["act"]).forward(x)
        torch.testing.assert_close(logits, model(x))
        torch.testing.assert_close(acts["act"], model.act(model.conv(x)))


def test_plain_tracing_comes_first():
    """timm's BatchNormAct2d is on the registry; traced plainly its activation stays visible."""
    from timm.layers import BatchNormAct2d
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4)).eval()
    targets = [n.target for n in trace(model).nodes if n.op == "call_module"]
    assert "1.act" in targets
