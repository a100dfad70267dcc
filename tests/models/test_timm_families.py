"""timm families with random weights, as a new user meets them (``num_classes=10``): the default
layers follow the one rule (a presence activation with a spatial extent, never a bare norm or an
Identity), the activation distillation perturbs is the layer's own output, and distilled classes
get non-zero importance and maps that are not constant."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.models.split import SplitModel, split_model

from tests.helpers import own_outputs

timm = pytest.importorskip("timm", reason="timm models need: pip install 'chip-fast[timm]'")

# name -> input size: 64 gives /32 networks a 2x2 deepest map; Inception-v3's valid convolutions
# need 107 or more for 2x2 after Mixed_7c.
FAMILIES = {"resnet18": 64, "resnext26ts": 64, "efficientnet_b0": 64,
            "mobilenetv3_small_100": 64, "convnext_atto": 64, "regnetx_002": 64,
            "densenet121": 64, "vgg11": 64, "inception_v3": 128, "cspresnet50": 64}
# What the rule gives, listed for readers (and so that a change of rule is seen here).
EXPECTED = {
    "resnet18": ["layer3.1", "layer4.1"],
    "resnext26ts": ["stages.3.0.conv1_1x1.bn", "stages.3.1"],
    "efficientnet_b0": ["blocks.5.0.bn1", "bn2"],
    "mobilenetv3_small_100": ["blocks.4.0.bn1", "blocks.5.0.bn1"],
    "convnext_atto": ["stages.2.blocks.5.mlp.act", "stages.3.blocks.1.mlp.act"],
    "regnetx_002": ["s4.b1.conv1.bn", "s4.b7"],
    "densenet121": ["features.transition3.norm", "features.norm5"],
    "vgg11": ["features.14", "features.19"],
    "inception_v3": ["Mixed_7a.branch7x7x3_3.bn", "Mixed_7c"],
    "cspresnet50": ["stages.2.conv_transition.bn", "stages.3.conv_transition.bn"],
}
# Not presence: signed (norms) or nothing at all (Identity).
NOT_PRESENCE = (nn.Identity, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _unit_outputs(model: nn.Module, x: torch.Tensor) -> None:
    """Scale each convolution and linear layer, in the order they run, so that its output on
    ``x`` has unit spread (LSUV initialisation, in one pass: a hook rescales the weight and the
    output it returns)."""
    def rescale(m: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor:
        std = float(out.std())
        if std > 0:
            m.weight /= std
            if m.bias is not None:
                m.bias /= std
            return out / std
        return out

    hooks = [m.register_forward_hook(rescale) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()


def _model(name: str) -> nn.Module:
    """Random weights, conditioned as trained ones are. Untrained, timm's models zero their
    residual branches (the last norm's scale, ConvNeXt's layer scale 1e-6: a branch that adds
    nothing has no importance to find), put pre-activations where GELU is nearly linear (so
    signed), and give logits anywhere from 1e-4 to 1e12 (inception_v3), where the sparse fit at
    its default alpha finds nothing or overflows. So: unit-spread layer outputs, norm and layer
    scales in [0.5, 1.5], norm statistics of the noise images, logits of unit spread."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(4, 3, FAMILIES[name], FAMILIES[name])
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("gamma") and p.dim() == 1:     # layer scale
                p.uniform_(0.5, 1.5)
        _unit_outputs(model, x)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.reset_running_stats()
                m.momentum = None      # cumulative: the statistics of exactly this batch
        model.train()(x)
        model.eval()
        model.get_classifier().weight /= model(x).std()
    return model


@pytest.mark.slow   # 2 to 15 s a family on two idle cores (a traced forward, a distillation)
@pytest.mark.filterwarnings("ignore:samples_per_class")   # few samples: mechanics, not accuracy
@pytest.mark.parametrize("name", list(FAMILIES))
def test_timm_family_defaults_activations_and_distillation(name):
    size = FAMILIES[name]
    model = _model(name)
    layers = chip_fast.default_layers(model, input_size=size)
    assert layers == EXPECTED[name]
    modules = dict(model.named_modules())
    for layer in layers:
        # exact types: timm's BatchNormAct2d is a BatchNorm2d that ends in its activation
        assert type(modules[layer]) not in NOT_PRESENCE, f"{name} {layer}"

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    split = split_model(model, layers)
    assert isinstance(split, SplitModel), name   # VGG's ConvMlp traced with timm's registry
    with torch.no_grad():
        acts, logits = split.forward(x)
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-4)
    (mid, deep) = (acts[l] for l in layers)
    assert deep.shape[-2] >= 2 and deep.shape[-1] >= 2
    assert mid.shape[-2] > deep.shape[-2] and mid.shape[-1] > deep.shape[-1]
    for layer, truth in own_outputs(model, layers, x).items():
        torch.testing.assert_close(acts[layer], truth, rtol=1e-4,
                                   atol=1e-5 * float(truth.abs().max()), msg=f"{name} {layer}")
        # presence: zero or near it where absent. Of unit normal inputs, Hardswish keeps 0.41 as
        # much negative mass as positive, SiLU 0.32, GELU 0.17, ReLU none; a signed output
        # (a norm, a linear bottleneck) about as much.
        a = acts[layer]
        assert float(-a.clamp(max=0).sum()) < 0.5 * float(a.clamp(min=0).sum()), f"{name} {layer}"

    labels = torch.tensor([0, 1])
    imp = chip_fast.distill_all_classes(model, (x, labels), layers, samples_per_class=16, folds=2,
                                        progress=False)
    for layer in layers:
        assert imp.weights[layer][:2].abs().sum(1).min() > 0, f"{name} {layer}"
    maps = chip_fast.explain(model, imp, x, [0, 1])
    assert maps.shape == (2, size, size)
    assert (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) > 0.1).all(), name
