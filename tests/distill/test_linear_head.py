"""The head path (``chip_fast.distill.linear_head``): per-channel ops and a Linear over the
flattened maps, run per view, with only a (K) x (K, O) product per perturbed network. It must
give what the elementwise path gives with the same masks."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import chip_fast
from chip_fast.distill.linear_head import ViewProducts, linear_head, perturbed_logits, view_runs
from chip_fast.models.split import SplitModel


class VggLike(nn.Module):
    """conv -> ReLU (the layer) -> BN, max-pool, depthwise conv -> flatten -> MLP, as VGG's
    classifier after conv5_3 with more kinds of per-channel op in the chain."""

    def __init__(self, k: int = 12, classes: int = 5, mix: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.ReLU(inplace=True))
        chain = [nn.BatchNorm2d(k), nn.MaxPool2d(2), nn.Conv2d(k, k, 3, padding=1, groups=k),
                 nn.ReLU()]
        if mix:   # a convolution that mixes channels: the mask no longer commutes
            chain.append(nn.Conv2d(k, k, 1))
        self.chain = nn.Sequential(*chain)
        self.classifier = nn.Sequential(nn.Linear(k * 16, 32), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(32, classes))
        with torch.no_grad():   # a batch norm that is not the identity
            self.chain[0].running_mean.uniform_(-0.5, 0.5)
            self.chain[0].running_var.uniform_(0.5, 2.0)
            self.chain[0].bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.classifier(torch.flatten(self.chain(self.conv(x)), 1))


def data(n=20, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % classes


def distill(model, path, **kw):
    """float32 tails: the two paths are compared to float rounding, and a CPU with native bf16
    would run the elementwise one in bfloat16. No control variate: the head path takes none, so
    only the plain sums are the same."""
    return chip_fast.distill_all_classes(model, data(), ["conv"], progress=False,
                                         tail_path=path, samples_per_class=256,
                                         tail_dtype="float32", **{"control": "none", **kw})


def head_of(net: VggLike, views: int):
    """(the head of net's tail, the layer's activations of ``views`` random photos)."""
    split = SplitModel(net, ["conv"])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(views, 3, 8, 8)), "conv")
        return linear_head(split, "conv", acts), acts


def test_the_head_is_recognised_and_gives_the_tails_logits():
    torch.manual_seed(0)
    net = VggLike().eval()
    head, acts = head_of(net, 3)
    with torch.inference_mode():
        assert head is not None and head.weight.shape == (12, 16, 32)
        masks = torch.rand(6, 12) < 0.5
        view = torch.tensor([2, 0, 1, 0, 1, 1])   # rows of a view need not be adjacent
        fill = head.fill_terms(torch.zeros(12))
        got = perturbed_logits(head, head.maps(acts), view, masks, fill)
        want = net.classifier(torch.flatten(net.chain(acts[view] * masks[:, :, None, None]), 1))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(head.plain_logits(head.maps(acts)),
                                   net.classifier(torch.flatten(net.chain(acts), 1)),
                                   rtol=1e-4, atol=1e-5)
        # mean fill: the filled channels' share comes from the fill's maps
        mu = torch.rand(12)
        mean_fill = head.fill_terms(mu)
        filled = torch.where(masks[:, :, None, None], acts[view], mu[None, :, None, None])
        torch.testing.assert_close(perturbed_logits(head, head.maps(acts), view, masks, mean_fill),
                                   net.classifier(torch.flatten(net.chain(filled), 1)),
                                   rtol=1e-4, atol=1e-5)


def test_what_is_not_a_head_takes_the_elementwise_path():
    torch.manual_seed(0)
    assert head_of(VggLike(mix=True).eval(), 2)[0] is None
    imp = distill(VggLike(mix=True).eval(), "auto")
    assert imp.settings["paths"] == {"conv": "elementwise"}
    # noise is drawn per element: it does not commute with the chain
    imp = distill(VggLike().eval(), "auto", fill="noise")
    assert imp.settings["paths"] == {"conv": "elementwise"}


@pytest.mark.parametrize("fill,baseline,masks", [("zero", "view", "auto"),
                                                 ("mean", "none", "independent")])
def test_head_path_gives_the_elementwise_importance(fill, baseline, masks):
    torch.manual_seed(0)
    net = VggLike().eval()
    head = distill(net, "auto", fill=fill, baseline=baseline, masks=masks)
    plain = distill(net, "elementwise", fill=fill, baseline=baseline, masks=masks)
    assert head.settings["paths"] == {"conv": "linear_head"}
    assert plain.settings["paths"] == {"conv": "elementwise"}
    w_head, w_plain = head.weights["conv"], plain.weights["conv"]
    assert torch.isfinite(w_head).all() and w_plain.abs().max() > 0
    # the same masks and responses up to float rounding: the same sums, the same fit
    torch.testing.assert_close(head.sum_zy["conv"], plain.sum_zy["conv"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w_head, w_plain, rtol=1e-3, atol=1e-4 * float(w_plain.abs().max()))


def test_vgg_conv5_3_takes_the_head_path():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(num_classes=4).eval()
    split = SplitModel(vgg, ["features.19"])
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(torch.randn(1, 3, 224, 224)), "features.19")
        head = linear_head(split, "features.19", acts)
    # max-pool and the 7x7 average pool run per view; 512 x 4096 per perturbed network
    assert head is not None and head.weight.shape == (512, 49, 4096)


def test_view_products_are_made_ahead_and_dropped_after_their_last_batch():
    torch.manual_seed(0)
    net = VggLike().eval()
    head, acts = head_of(net, 5)
    with torch.inference_mode():
        maps, (b, _) = head.maps(acts), head.fill_terms(torch.zeros(12))
        schedule = [[0, 1], [1, 2], [3], [3, 4]]
        per_view = 4 * 12 * 32
        products = ViewProducts(head, maps, b, schedule, budget=3 * per_view)
        first = products.for_batch(0)
        assert sorted(first) == [0, 1, 2]          # batch 1's new view made with batch 0's
        want = torch.einsum("kpo,kp->ko", head.weight, maps[2]) - b
        torch.testing.assert_close(first[2], want, rtol=1e-5, atol=1e-6)
        assert sorted(products.for_batch(1)) == [1, 2]         # view 0 is done with
        assert sorted(products.for_batch(2)) == [3, 4]
        assert sorted(products.for_batch(3)) == [3, 4]
        # the rows of a batch, through the products, are the tail's logits
        view = torch.tensor([3, 4, 3])
        masks = torch.rand(3, 12) < 0.5
        got = head.logits(products.for_batch(3), view_runs(view, torch.device("cpu")), masks,
                          head.fill_terms(torch.zeros(12))[1])
        want = net.classifier(torch.flatten(net.chain(acts[view] * masks[:, :, None, None]), 1))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
