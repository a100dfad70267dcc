"""The chain_per_view path (``chip_fast.distill.chain_per_view``): a tail's leading per-channel
ops run once per view, each perturbed network only the rest. It must give what the elementwise
path gives with the same masks, and be refused where the fill does not commute with the ops."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import chip_fast
from chip_fast.distill.chain_per_view import chain_per_view
from chip_fast.models.split import SplitModel

LAYER = "layer"


class Block(nn.Module):
    """conv -> ReLU (the layer) -> depthwise stride-2 conv -> BN -> ReLU6 -> 1x1 conv -> flatten
    -> Linear: an inverted residual block's shape after its expand convolution."""

    def __init__(self, k: int = 8, inplace: bool = False, head: str = "relu") -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.ReLU(inplace=inplace))
        self.dw = nn.Sequential(nn.ReLU(inplace=True) if inplace else nn.Identity(),
                                nn.Conv2d(k, k, 3, stride=2, padding=1, groups=k),
                                nn.BatchNorm2d(k), nn.ReLU6())
        self.project = nn.Conv2d(k, 6, 1)
        self.act = nn.ReLU() if head == "relu" else nn.Identity()   # identity: rest linear
        self.fc = nn.Linear(6 * 4 * 4, 4)
        with torch.no_grad():   # a batch norm that is not the identity
            bn = self.dw[2]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.project(self.dw(self.layer(x)))), 1))


def data(n=16, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % classes


def distill(net, path, **kw):
    """float32 tails: the two paths compared to float rounding (a CPU with native bf16 would run
    them in bfloat16). No control variate unless asked: the two paths take their view slopes at
    different points, so only their plain sums are the same."""
    kw = {"samples_per_class": 256, "seed": 0, "control": "none", **kw}
    return chip_fast.distill_all_classes(net, data(), [LAYER], progress=False, tail_path=path,
                                         tail_dtype="float32", **kw)


def chain_of(net, fill="zero"):
    split = SplitModel(net, [LAYER])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(3, 3, 8, 8)), LAYER)
        return chain_per_view(split, LAYER, acts, fill), acts


def test_the_chain_runs_once_per_view_and_the_rest_gives_the_tails_logits():
    torch.manual_seed(0)
    net = Block().eval()
    chain, acts = chain_of(net)
    assert chain is not None
    with torch.inference_mode():
        maps = chain.maps(acts)
        assert maps.shape == (3, 8, 4, 4)                     # after the stride-2 depthwise conv
        want_fill = net.dw[3](net.dw[2](net.dw[1](torch.zeros(1, 8, 8, 8))))[0, :, 0, 0]
        torch.testing.assert_close(chain.fill, want_fill)     # ReLU6 of the folded bias
        assert chain.fill_kind == "mean"       # a per-channel value, decided once on the host
        masks = torch.rand(5, 8) < 0.5
        view = torch.tensor([0, 2, 1, 0, 2])
        got = chain.rest.module(chain.perturbed(maps[view], masks))
        want = net.fc(torch.flatten(net.act(net.project(net.dw(acts[view] * masks[:, :, None,
                                                                                     None]))), 1))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inplace", [False, True])
def test_same_sums_as_the_elementwise_path(inplace):
    """Without the control variate the two paths make the same responses to the same masks:
    equal sums and weights up to float rounding (an in-place ReLU at the cut included, which
    must not write into the views a unit keeps)."""
    torch.manual_seed(0)
    net = Block(inplace=inplace).eval()
    chain = distill(net, "auto")
    plain = distill(net, "elementwise")
    assert chain.settings["paths"] == {LAYER: "chain_per_view"}
    assert plain.settings["paths"] == {LAYER: "elementwise"}
    torch.testing.assert_close(chain.sum_zy[LAYER], plain.sum_zy[LAYER], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chain.sum_yy[LAYER], plain.sum_yy[LAYER], rtol=1e-5, atol=1e-5)
    w = plain.weights[LAYER]
    assert w.abs().max() > 0
    torch.testing.assert_close(chain.weights[LAYER], w, rtol=1e-3, atol=1e-4 * float(w.abs().max()))


def test_view_slopes_at_the_chains_maps_are_exact_where_the_rest_is_linear():
    """The mask enters at the chain's maps, so where the rest is linear in them each view's
    slope is its exact coefficient and the control variate leaves almost no sampling noise:
    two seeds then agree far more closely than on the elementwise path, whose slopes are
    taken through the chain's ReLU6."""
    torch.manual_seed(0)
    net = Block(head="linear").eval()

    def seed_gap(path):
        w = [distill(net, path, seed=s, control="view_slopes").weights[LAYER] for s in (0, 1)]
        return float((w[0] - w[1]).abs().max() / w[0].abs().max())
    chain_gap, plain_gap = seed_gap("auto"), seed_gap("elementwise")
    assert chain_gap < plain_gap / 5, (chain_gap, plain_gap)


@pytest.mark.parametrize("fill", ["mean", "noise"])
def test_fills_that_do_not_commute_stay_elementwise(fill):
    """A mean fill's constant map turns uneven at the padded border of the depthwise conv, and
    noise is drawn per element: neither is a per-channel fill after the chain."""
    torch.manual_seed(0)
    net = Block().eval()
    assert chain_of(net, fill)[0] is None
    assert distill(net, "auto", fill=fill, samples_per_class=64).settings["paths"] == {
        LAYER: "elementwise"}


def test_a_chain_whose_fill_is_zero_perturbs_with_zero_fill():
    """ReLU and max-pool map zeros to zeros: the perturbation keeps the plain zero fill."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 4)).eval()
    split = SplitModel(net, ["0"])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(2, 3, 8, 8)), "0")
        chain = chain_per_view(split, "0", acts, "zero")
    assert chain is not None and chain.fill_kind == "zero" and not chain.fill.any()


def test_a_tail_that_mixes_channels_first_has_no_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
                        nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4)).eval()
    split = SplitModel(net, ["0"])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(2, 3, 8, 8)), "0")
        assert chain_per_view(split, "0", acts, "zero") is None


def test_mobilenet_v2_expand_layer_takes_the_path():
    """The default 14x14 layer of MobileNetV2: depthwise conv (BN folded) and ReLU6 per view,
    the rest from the 7x7 maps."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(num_classes=5).eval()
    split = SplitModel(net, ["features.14.conv.0"])
    with torch.inference_mode():
        x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        acts = split.activation(split.run_prefix(x), "features.14.conv.0")
        chain = chain_per_view(split, "features.14.conv.0", acts, "zero")
        assert chain is not None and chain.maps(acts).shape == (1, 576, 7, 7)
        assert (chain.fill >= 0).all() and (chain.fill <= 6).all()   # ReLU6 of a bias


def test_efficientnet_lite0_mid_layer_takes_the_path():
    """EfficientNet-Lite's 'same' convolutions trace as F.pad and torch.conv2d (the split makes
    them modules, ``models.folding``): the depthwise conv and its asymmetric padding are
    per-channel too, the 1x1 projection after them is not."""
    from chip_fast.models.efficientnet_lite import EfficientNetLite0
    torch.manual_seed(0)
    net = EfficientNetLite0().eval()
    layer = "features.6.0.block.0"
    split = SplitModel(net, [layer])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(1, 3, 224, 224)), layer)
        chain = chain_per_view(split, layer, acts, "zero")
        assert chain is not None and chain.maps(acts).shape == (1, 672, 7, 7)
        modules = dict(chain.rest.module.named_modules())
        convs = [modules[n.target] for n in chain.rest.module.graph.nodes
                 if n.op == "call_module" and isinstance(modules[n.target], torch.nn.Conv2d)]
        assert convs[0].groups == 1 and convs[0].kernel_size == (1, 1)   # the projection
