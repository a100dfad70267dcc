"""The one way to get activations (``chip_fast.models.split``): the fx split returns what
distillation perturbs, also where in-place operations follow the layer, for the common torchvision
families."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import chip_fast
from chip_fast.models.layers import LayerError, default_layers
from chip_fast.models.split import HookedModel, SplitModel, split_model

from tests.helpers import own_outputs


class InplaceNet(nn.Module):
    """conv -> ReLU(inplace) -> conv -> ReLU(inplace) -> pool -> linear, as VGG is built."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_in_place_relu_does_not_change_the_activation():
    torch.manual_seed(0)
    model = InplaceNet().eval()
    x = torch.randn(2, 3, 10, 10)
    truth = own_outputs(model, ["conv1", "conv2"], x)
    assert (truth["conv2"] < 0).any()           # else the test could not see the ReLU
    for layers in (["conv2"], ["conv1", "conv2"]):
        with torch.no_grad():
            acts, logits = SplitModel(model, layers).forward(x)
            torch.testing.assert_close(logits, model(x))
        for l in layers:
            assert torch.equal(acts[l], truth[l]), l


def test_explain_maps_the_activation_distillation_perturbed():
    """The map of a file distilled at conv2 is built from the pre-ReLU conv2 output."""
    torch.manual_seed(0)
    model = InplaceNet().eval()
    images, labels = torch.randn(8, 3, 10, 10), torch.arange(8) % 4
    imp = chip_fast.distill_all_classes(model, (images, labels), ["conv2"], samples_per_class=64,
                                        progress=False)
    maps = chip_fast.explain(model, imp, images[:2], [0, 1])
    a = own_outputs(model, ["conv2"], images[:2])["conv2"]
    w = imp.weights["conv2"][[0, 1]].clamp(min=0)
    m = torch.relu(torch.einsum("pk,pkhw->phw", w, a))
    lo, hi = m.flatten(1).amin(1)[:, None, None], m.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(maps, (m - lo) / (hi - lo), atol=1e-5, rtol=1e-5)


FAMILIES = ["vgg16", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v3_large",
            "convnext_tiny", "mobilenet_v2", "mobilenet_v3_small", "regnet_y_400mf"]


@pytest.mark.parametrize("arch", FAMILIES)
def test_families_activations_equal_the_layers_own_outputs(arch):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10).eval()
    layers = default_layers(model, input_size=64)
    x = torch.randn(2, 3, 64, 64)
    split = split_model(model, layers)
    assert isinstance(split, SplitModel)
    with torch.no_grad():
        acts, logits = split.forward(x)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    modules = dict(model.named_modules())
    truth = own_outputs(model, [l for l in layers if l in modules], x)
    for l, t in truth.items():
        # ConvNeXt's GELU runs channels-last: its maps are the same numbers, channels first
        t = split.layouts[l].channels_first(t)
        # Batch norms folded into the convolutions round differently, ~1e-6 of the scale; an
        # in-place op after the layer would change values by their own size.
        torch.testing.assert_close(acts[l], t, rtol=1e-4, atol=1e-5 * float(t.abs().max()),
                                   msg=f"{arch} {l}")


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.conv(x)
        if a.sum() > 0:
            a = a * 1.0
        return self.fc(self.act(a).mean((2, 3)))


def test_untraceable_models_fall_back_to_copying_hooks():
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(2, 3, 8, 8)
    split = split_model(model, ["conv"])
    assert isinstance(split, HookedModel)
    with torch.no_grad():
        acts, logits = split.forward(x)
        torch.testing.assert_close(logits, model(x))
    assert (acts["conv"] < 0).any()              # copied before the in-place ReLU
    with pytest.raises(LayerError, match="cannot trace"):
        SplitModel(model, ["conv"])
    with pytest.raises(LayerError, match="Valid names include"):
        split_model(model, ["convv"])


def test_function_call_layers_by_node_name():
    """DenseNet's last activation is F.relu(inplace=True): a node name, not a module."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=5).eval()
    split = SplitModel(model, ["relu"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        acts, logits = split.forward(x)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
        norm5 = own_outputs(model, ["features.norm5"], x)["features.norm5"]
    torch.testing.assert_close(acts["relu"], torch.relu(norm5))
    with pytest.raises(LayerError, match="Function calls"):
        SplitModel(model, ["relu_9"])


class LayerScaleNet(nn.Module):
    """A parameter reshaped in forward after the cut, as ConvNeXt's layer scale is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x) * self.gamma.reshape(1, -1, 1, 1) + x
        return self.fc(x.mean((2, 3)))


def test_values_made_of_parameters_are_recomputed_in_the_tail():
    """Not taken per image from the prefix: a (1, C, 1, 1) tensor gathered by image rows failed
    with 'IndexError: index out of range' (timm's ConvNeXt)."""
    torch.manual_seed(0)
    model = LayerScaleNet().eval()
    split = SplitModel(model, ["conv1"])
    assert split.tails["conv1"].extras == []
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6) % 3
    imp = chip_fast.distill_all_classes(model, (images, labels), ["conv1"], samples_per_class=32,
                                        progress=False)
    assert imp.weights["conv1"][:3].abs().sum() > 0
