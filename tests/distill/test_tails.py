"""Tail paths (``chip_fast.distill.tails``): the affine path (tails linear in the spatial mean)
recognised, and against the per-element path."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import chip_fast
from chip_fast.models.split import SplitModel
from chip_fast.distill.tails import affine_tail


class Net(nn.Module):
    def __init__(self, classes: int = 5, k: int = 12) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(k, classes))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def data(n=10, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 7, 7, generator=g), torch.arange(n) % classes


def distill(model, path, **kw):
    """Both paths sampled: on the affine path with the logit the default would be the exact
    estimator (tests/distill/test_estimators.py). float32 tails: the paths are compared to float
    rounding, and a CPU with native bf16 would run the elementwise one in bfloat16. No control
    variate: the affine path takes none, so only the plain sums are the same."""
    return chip_fast.distill_all_classes(model, data(), ["conv"], progress=False,
                                         tail_path=path, estimator="sampled",
                                         tail_dtype="float32", **{"control": "none", **kw})


def test_affine_tails_are_recognised_and_others_are_not():
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v2(num_classes=7).eval()
    split = SplitModel(m, ["features.17", "features.18"])
    with torch.no_grad():
        acts, logits = split.forward(torch.randn(2, 3, 64, 64))
    tail = affine_tail(split, "features.18", acts["features.18"])
    assert tail is not None and tail.weight.shape == (7, 1280)
    torch.testing.assert_close(tail.logits(acts["features.18"].mean((2, 3))), logits,
                               rtol=1e-4, atol=1e-5)
    assert affine_tail(split, "features.17", acts["features.17"]) is None   # convs follow
    r = torchvision.models.resnet18(num_classes=3).eval()
    split = SplitModel(r, ["layer4"])
    with torch.no_grad():
        acts, _ = split.forward(torch.randn(1, 3, 64, 64))
    assert affine_tail(split, "layer4", acts["layer4"]) is not None


def test_dropout_in_training_mode_is_not_affine():
    net = Net().eval()
    net.fc[0].train()
    split = SplitModel(net, ["conv"])
    assert affine_tail(split, "conv", torch.randn(2, 12, 7, 7)) is None


@pytest.mark.parametrize("fill,baseline", [("zero", "none"), ("mean", "none"), ("zero", "view")])
def test_zero_and_mean_fills_give_the_same_importance_on_both_paths(fill, baseline):
    torch.manual_seed(0)
    net = Net().eval()
    a = distill(net, "auto", fill=fill, samples_per_class=256, seed=4, baseline=baseline)
    b = distill(net, "elementwise", fill=fill, samples_per_class=256, seed=4, baseline=baseline)
    assert a.settings["paths"] == {"conv": "affine"}
    assert b.settings["paths"] == {"conv": "elementwise"}
    torch.testing.assert_close(a.r["conv"], b.r["conv"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(a.weights["conv"], b.weights["conv"], rtol=1e-3, atol=1e-5)


def test_noise_fill_agrees_within_the_sampling_error():
    """Same masks, other fill-noise draws: r differs only by the fill noise's share of y, whose
    size follows from the model: var(dr_k) = p(1-p) var(u - u') / N with
    u = sum_j W_cj (1 - z_j) sigma_j eps_j / sqrt(E) per path."""
    torch.manual_seed(0)
    net = Net().eval()
    n = 2048
    a = distill(net, "auto", samples_per_class=n, seed=7, fill="noise")
    b = distill(net, "elementwise", samples_per_class=n, seed=7, fill="noise")
    w, sigma, e = net.fc[1].weight.detach().double(), a.fill_std["conv"].double(), 49
    p = 0.5
    var_u = (1 - p) * (w ** 2 * sigma[None, :] ** 2).sum(1) / e      # per class, one path
    sd = (p * (1 - p) * 2 * var_u / n).sqrt()                         # of each r_ck difference
    z = (a.r["conv"] - b.r["conv"]) / sd[:, None]
    assert z.abs().max() < 5, z.abs().max()
    # The differences are of the predicted size: a fill mean drawn with sigma instead of
    # sigma / sqrt(E) would make them sqrt(E) = 7 times larger.
    assert 0.5 < z.pow(2).mean().sqrt() < 1.5
