"""Every family's default layers follow the one rule of chip_fast.models.layers: the output of the last
ReLU-like operation (a presence signal) at the deepest resolution and at twice it. Checked
against what the model itself computes (forward hooks on every activation module), not against
the rule's own code."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from chip_fast.models.efficientnet_lite import EfficientNetLite0
from chip_fast.models.layers import ACTIVATIONS, default_layers
from chip_fast.models.split import SplitModel

SIZE = 64   # /32 networks: deepest 2x2, twice it 4x4
# family -> (architecture, the layers the rule must give; checked by the test, listed for readers)
FAMILIES = {
    "vgg16": ["features.22", "features.29"],
    "resnet18": ["layer3.1", "layer4.1"],
    "densenet121": ["features.transition3.relu", "relu"],
    "efficientnet_b0": ["features.6.0.block.0", "features.8"],
    "mobilenet_v2": ["features.14.conv.0", "features.18"],
    "mobilenet_v3_large": ["features.13.block.0", "features.16"],
    "mobilenet_v3_small": ["features.9.block.0", "features.12"],
    "regnet_y_400mf": ["trunk_output.block4.block4-0.f.a", "trunk_output.block4.block4-5"],
    "efficientnet_lite0": ["features.6.0.block.0", "features.8"],
}


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "efficientnet_lite0":
        return EfficientNetLite0(num_classes=10).eval()
    return torchvision.models.get_model(arch, num_classes=10).eval()


def _activation_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(module name, output) of every call of an activation module, in execution order."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[str, torch.Tensor]] = []

    def record(module: nn.Module, _inputs, out: torch.Tensor) -> None:
        if isinstance(module, ACTIVATIONS) and module in names:
            seen.append((names[module], out.clone()))   # before any in-place op changes it

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_defaults_are_the_last_activation_outputs_at_the_two_resolutions(arch):
    model = _model(arch)
    layers = default_layers(model, input_size=SIZE)
    assert layers == FAMILIES[arch]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        acts, _ = SplitModel(model, layers).forward(x)
    outs = _activation_outputs(model, x)
    spatial = [(n, o) for n, o in outs if o.dim() == 4 and o.shape[1] != o.shape[-1]
               and o.shape[-2] * o.shape[-1] > 1]   # not channels-last, not pooled
    deep_hw = min((tuple(o.shape[-2:]) for _, o in spatial), key=lambda hw: hw[0] * hw[1])
    mid, deep = (acts[l] for l in layers)
    assert tuple(deep.shape[-2:]) == deep_hw
    assert tuple(mid.shape[-2:]) == (2 * deep_hw[0], 2 * deep_hw[1])
    for layer, a in zip(layers, (mid, deep)):
        if layer == "relu":   # DenseNet's final F.relu, a function call: not hookable
            assert (a >= 0).all()
            continue
        same = [i for i, (_, o) in enumerate(spatial) if o.shape == a.shape
                and torch.allclose(o, a, rtol=1e-4, atol=1e-5)]
        assert same, f"{arch} {layer} is not the output of an activation"
        # the last one at its resolution, among activation modules that run once
        once = {n for n, _ in spatial if sum(m == n for m, _ in spatial) == 1}
        later = [n for n, o in spatial[same[-1] + 1:]
                 if o.shape[-2:] == a.shape[-2:] and n in once]
        assert not later, f"{arch} {layer}: {later} come later at the same resolution"


def test_channels_last_activations_count_as_presence():
    """ConvNeXt applies GELU channels-last (N, H, W, C) inside its blocks: read as C channels
    over the grid (chip_fast.models.layouts), its GELUs are its presence layers, not the signed
    stage outputs."""
    model = torchvision.models.convnext_tiny(num_classes=10).eval()
    layers = default_layers(model, input_size=SIZE)
    assert layers == ["features.5.8.block.4", "features.7.2.block.4"]
    with torch.no_grad():
        acts, _ = SplitModel(model, layers).forward(torch.randn(2, 3, SIZE, SIZE))
    assert [tuple(acts[l].shape) for l in layers] == [(2, 1536, 4, 4), (2, 3072, 2, 2)]


class NoActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.stage = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


def test_models_without_presence_activations_fall_back_to_stage_outputs(caplog):
    with caplog.at_level("INFO", logger="chip_fast"):
        assert default_layers(NoActivation().eval(), input_size=16) == ["stem.1", "stage.1"]
    assert "stage outputs" in caplog.text


def test_linear_bottlenecks_are_never_defaults():
    """The stage outputs of MobileNetV2 / EfficientNet take negative values: not defaults."""
    for arch in ("mobilenet_v2", "efficientnet_lite0", "efficientnet_b0"):
        model = _model(arch)
        layers = default_layers(model, input_size=SIZE)
        with torch.no_grad():
            acts, _ = SplitModel(model, layers).forward(torch.randn(2, 3, SIZE, SIZE))
        assert all((acts[l] >= -1e-6 if arch != "efficientnet_b0" else acts[l] >= -0.3).all()
                   for l in layers)   # SiLU's minimum is -0.278


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.b(self.a(x))
        if x.sum() > -1:        # data-dependent: torch.fx cannot trace this
            x = x * 1
        return self.fc(x.mean((2, 3)))


def test_untraceable_models_use_their_activation_modules():
    assert default_layers(Untraceable().eval(), input_size=16) == ["a.1", "b.1"]
