"""The split's graph rewrites (chip_fast.models.folding): functional convolutions on the model's
parameters become Conv2d modules sharing them, a symmetric zero pad before one becomes its
padding and an asymmetric one stays, batch norms after them fold, and the split's prefix and
tail still compute the model's values."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from chip_fast.models.folding import convs_as_modules, simplified
from chip_fast.models.split import SplitModel, capture_activations


class SameConvs(nn.Module):
    """Convolutions called as functions, as EfficientNet-Lite's and timm's 'same' ones trace."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)   # depthwise, stride 2
        self.b2 = nn.Parameter(torch.randn(8) * 0.1)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu6(self.bn1(torch.conv2d(F.pad(x, (1, 1, 1, 1)), self.w1)))
        x = F.relu6(self.bn2(F.conv2d(F.pad(x, (0, 1, 0, 1)), self.w2, self.b2, 2, 0, 1, 8)))
        return self.fc(x.mean((2, 3)))


def net() -> SameConvs:
    torch.manual_seed(0)
    model = SameConvs().eval()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def test_functional_convs_become_modules_and_symmetric_pads_their_padding():
    model = net()
    gm = convs_as_modules(fx.symbolic_trace(model))
    modules = dict(gm.named_modules())
    convs = [modules[n.target] for n in gm.graph.nodes
             if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
    assert [c.padding for c in convs] == [(1, 1), (0, 0)] and convs[1].groups == 8
    assert convs[0].weight is model.w1 and convs[1].bias is model.b2   # shared, not copied
    pads = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is F.pad]
    assert len(pads) == 1 and tuple(pads[0].args[1]) == (0, 1, 0, 1)  # asymmetric: kept
    assert not any(n.op == "call_function" and n.target in (torch.conv2d, F.conv2d)
                   for n in gm.graph.nodes)
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)


def test_their_batch_norms_fold_and_the_model_is_untouched():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = simplified(fx.symbolic_trace(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for n in gm.graph.nodes
                   if n.op == "call_module" for m in [gm.get_submodule(n.target)])
    x = torch.randn(3, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_efficientnet_lite0_splits_into_the_models_own_values():
    """Lite0's convolutions are all 'same' convolutions: after the rewrite its prefix returns
    the layers' own outputs and the tail the model's logits, with no batch norm left to run."""
    from chip_fast.models.efficientnet_lite import EfficientNetLite0
    torch.manual_seed(0)
    model = EfficientNetLite0().eval()
    layers = ["features.6.0.block.0", "features.8"]
    split = SplitModel(model, layers)
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        split.run_prefix(x)
        out = split.run_prefix(x)
        with capture_activations(model, layers) as want:
            logits = model(x)
        tail = split.tails["features.6.0.block.0"].module
        got_logits = tail(split.activation(out, "features.6.0.block.0").clone())
    for layer in layers:
        torch.testing.assert_close(split.activation(out, layer), want[layer], rtol=1e-4,
                                   atol=1e-4)
    torch.testing.assert_close(got_logits, logits, rtol=1e-3, atol=1e-3)
    assert not any(isinstance(tail.get_submodule(n.target), nn.BatchNorm2d)
                   for n in tail.graph.nodes if n.op == "call_module")


def test_a_distilled_block_inside_another_layers_tail_is_opened_and_folded():
    """MobileNetV2's ``features.18`` (Conv-BN-ReLU6, a leaf of the trace because it is a
    distilled layer) stays whole where the prefix returns it, and is opened inside the tail of
    ``features.14.conv.0``, so its batch norm folds there; both give the model's own values."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=5).eval()
    for m in model.modules():   # batch norms that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    split = SplitModel(model, ["features.14.conv.0", "features.18"])
    tail = split.tails["features.14.conv.0"].module
    calls = [n.target for n in tail.graph.nodes if n.op == "call_module"]
    assert "features.18" not in calls and "features.18.2" in calls
    assert not any(isinstance(dict(tail.named_modules())[t], nn.BatchNorm2d) for t in calls)
    assert "features.18" in [n.target for n in split.prefix.graph.nodes if n.op == "call_module"]
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        with capture_activations(model, ["features.18"]) as own:
            logits = model(x)
        out = split.run_prefix(x)
        torch.testing.assert_close(split.activation(out, "features.18"), own["features.18"])
        torch.testing.assert_close(tail(split.activation(out, "features.14.conv.0")), logits,
                                   rtol=1e-4, atol=1e-5)
