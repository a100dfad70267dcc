"""Convolutions fused with their activations on a CPU (chip_fast.models.cpu_fusion): every pair
oneDNN can fuse is fused and nothing else, the fused module computes the unfused one's values
(float32 and bfloat16), a fused copy that disagrees or fails is never used, and the split's
prefix and the engine's tails run fused where that holds."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from chip_fast.distill.tails import TailRunner
from chip_fast.models import cpu_fusion
from chip_fast.models.cpu_fusion import FusedOnCpu, fused_copy
from chip_fast.models.split import SplitModel, capture_activations

pytestmark = pytest.mark.skipif(not cpu_fusion.available(), reason="this PyTorch has no oneDNN")


class Pairs(nn.Module):
    """One convolution per activation the rewrite knows, and three it must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1) for _ in range(9)])
        self.same = nn.Conv2d(8, 8, 3, padding="same")
        self.relu, self.relu6, self.silu = nn.ReLU(inplace=True), nn.ReLU6(), nn.SiLU()
        self.hswish, self.htanh = nn.Hardswish(), nn.Hardtanh(-0.5, 0.7)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

    def forward(self, x):
        c = self.convs
        x = self.relu(c[0](x))
        x = self.relu6(c[1](x))
        x = self.silu(c[2](x))
        x = self.hswish(c[3](x))
        x = self.htanh(c[4](x))
        x = F.relu6(c[5](x))
        x = F.hardtanh(c[6](x), -2.0, 3.0)
        y = c[7](x)                      # two users: not fused
        x = F.relu(y) + y
        x = torch.sigmoid(c[8](x))       # no oneDNN rule here: not fused
        x = F.relu(self.same(x))         # padding "same": not fused
        return self.fc(self.pool(x).flatten(1))


def fused_targets(gm: fx.GraphModule) -> int:
    return sum(n.op == "call_function" and n.target is torch.ops.mkldnn._convolution_pointwise
               for n in gm.graph.nodes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_fusible_pair_is_fused_and_computes_the_same(dtype):
    torch.manual_seed(0)
    gm = fx.symbolic_trace(Pairs().eval().to(dtype).to(memory_format=torch.channels_last))
    fused = fused_copy(gm)
    assert fused is not None and fused_targets(fused) == 7
    x = torch.randn(6, 8, 9, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want, got = gm(x.clone()).float(), fused(x.clone()).float()
    assert torch.isfinite(got).all()
    rel = float((got - want).norm() / want.norm())
    assert rel < (1e-5 if dtype == torch.float32 else 2e-2), rel


def test_the_copy_shares_the_parameters():
    """The tails cast their weights before fusing; a later change of the module is seen too."""
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())
    fused = fused_copy(gm)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        gm.get_submodule("0").weight.mul_(2.0)
        torch.testing.assert_close(fused(x), gm(x))


def test_nothing_to_fuse_gives_none():
    assert fused_copy(fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sigmoid()))) is None


def test_a_fused_copy_that_disagrees_is_not_used(monkeypatch, caplog):
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())
    wrong = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())
    monkeypatch.setattr(cpu_fusion, "fused_copy", lambda m: wrong)
    with caplog.at_level(logging.INFO, logger="chip_fast"), torch.no_grad():
        picked = FusedOnCpu(gm, "test module").for_inputs(torch.randn(3, 3, 4, 4))
    assert picked is gm and "differs" in caplog.text


def test_a_fused_copy_that_fails_is_not_used(monkeypatch, caplog):
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())

    def broken(_):
        raise RuntimeError("no such op in this build")
    monkeypatch.setattr(cpu_fusion, "fused_copy", broken)
    with caplog.at_level(logging.INFO, logger="chip_fast"), torch.no_grad():
        picked = FusedOnCpu(gm, "test module").for_inputs(torch.randn(3, 3, 4, 4))
    assert picked is gm and "no such op" in caplog.text


def test_autocast_with_float32_weights_runs_unfused():
    """The fused op would compute in float32 where autocast runs the unfused convolutions in
    bfloat16: not the same computation, so the unfused module runs."""
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())
    wrapper = FusedOnCpu(gm, "test module")
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert wrapper.for_inputs(torch.randn(3, 3, 4, 4)) is gm
        assert wrapper.for_inputs(torch.randn(3, 3, 4, 4)) is wrapper.fused is not None


def mobilenet():
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    for m in model.modules():   # trained-like statistics, so the maps are not all clipped
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-0.2, 0.2)
    return model


def test_the_prefix_runs_fused_and_returns_the_layers_own_outputs():
    model = mobilenet()
    layers = ["features.6", "features.14.conv.0", "features.18"]
    split = SplitModel(model, layers)
    x = torch.randn(5, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        split.run_prefix(x)                      # binds the layouts, unfused
        out = split.run_prefix(x)                # fused from here on
        with capture_activations(model, layers) as want:
            model(x)
    assert split._cpu_prefix.fused is not None
    for layer in layers:
        torch.testing.assert_close(split.activation(out, layer), want[layer], rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tail_runner_runs_fused_and_gives_the_tails_logits(dtype):
    model = mobilenet()
    split = SplitModel(model, ["features.14.conv.0"])
    x = torch.randn(6, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a = split.activation(split.run_prefix(x), "features.14.conv.0")
        runner = TailRunner(split, "features.14.conv.0", torch.device("cpu"), dtype)
        got = runner(a.to(dtype).contiguous(memory_format=torch.channels_last), {}, None)
        want = split.tails["features.14.conv.0"].module(a)
    assert runner._cpu.fused is not None
    rel = float((got - want).norm() / want.norm())
    assert rel < (1e-5 if dtype == torch.float32 else 3e-2), rel


def test_gradients_go_through_the_unfused_module():
    """The fused op has no backward: where gradients are recorded (the atlas differentiates the
    prefix) the unfused module runs, and the gradient reaches the input."""
    gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).eval())
    wrapper = FusedOnCpu(gm, "test module")
    x = torch.randn(3, 3, 4, 4, requires_grad=True)
    module = wrapper.for_inputs(x)
    assert module is gm
    module(x).sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert wrapper.for_inputs(x) is wrapper.fused is not None
