"""The view-slope control variate in the engine (chip_fast.distill.slopes): each view's slope is
its mask gradient at the mean-masked activation; an elementwise tail that is in fact linear in
the mask has exact slopes, so the control variate removes every bit of the views' differences
and leaves the exact estimator's answer; on a non-linear tail it estimates what the plain
regression estimates, with less seed noise, and the file says which layers used it."""
from __future__ import annotations

import torch

import chip_fast
from chip_fast.distill.slopes import view_slopes
from chip_fast.models.split import SplitModel
from tests.distill.test_estimators import Net   # "feat": non-linear tail, "deep": affine


def data(n: int = 24, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 3


def distil(model, layers, **kw):
    return chip_fast.distill_all_classes(model, data(), layers, progress=False,
                                         tail_dtype="float32", **kw)


def cut(layer: str, n: int):
    """(net, split at ``layer``, the layer's activations of ``n`` views, their labels)."""
    torch.manual_seed(0)
    net = Net().eval()
    split = SplitModel(net, [layer])
    x, labels = data(n)
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(x), layer)
    return net, split, acts, labels


def test_slopes_of_a_linear_tail_are_each_views_coefficients():
    """Behind the last conv the tail is pooling and a linear layer: the response of view v is
    b + W_c . (z * mean(a_v)), so d/dz_k is W_ck mean(a_vk) at any point."""
    net, split, acts, labels = cut("deep", 5)
    q = view_slopes(split.tails["deep"], acts, labels, 0.5, None, "logit", 2)
    want = (net.fc.weight[labels] * acts.mean((2, 3))).double()
    torch.testing.assert_close(q, want, rtol=1e-5, atol=1e-6)
    # with a mean fill the slope is W_ck (mean(a_vk) - mu_k)
    mu = torch.rand(acts.shape[1])
    q = view_slopes(split.tails["deep"], acts, labels, 0.5, mu, "logit", 3)
    torch.testing.assert_close(q, (net.fc.weight[labels] * (acts.mean((2, 3)) - mu)).double(),
                               rtol=1e-5, atol=1e-6)


def test_exact_slopes_leave_the_exact_answer():
    """Sampled through the elementwise path, a linear tail's responses differ from view to view
    only through the slopes: the control variate takes all of that out, and the sampled
    regression (unpenalised, so that it is the masks' own least squares) lands on the closed
    form (the exact estimator) far closer than without it."""
    torch.manual_seed(3)
    net = Net().eval()
    exact = distil(net, ["deep"], samples_per_class=512, alpha=0.0)
    runs = {c: distil(net, ["deep"], samples_per_class=512, tail_path="elementwise",
                      estimator="sampled", control=c, alpha=0.0)
            for c in ("none", "view_slopes")}
    assert runs["view_slopes"].settings["controls"] == {"deep": "view_slopes"}
    assert "controls" not in runs["none"].settings
    err = {c: float((imp.weights["deep"] - exact.weights["deep"]).norm())
           for c, imp in runs.items()}
    assert err["view_slopes"] < 0.2 * err["none"]
    b = runs["view_slopes"].settings["control_coefficients"]["deep"]
    assert all(abs(v - 1.0) < 0.3 for v in b)   # the true slopes, taken about whole


def test_a_nonlinear_tail_keeps_the_estimand():
    """At "feat" (a non-linear tail) runs with and without the control variate estimate the same
    weights: over seeds, the two estimators' means agree within their spread."""
    torch.manual_seed(3)
    net = Net().eval()
    runs = {c: torch.stack([distil(net, ["feat"], samples_per_class=256, seed=s,
                                   control=c).r["feat"] for s in range(6)])
            for c in ("none", "view_slopes")}
    diff = runs["view_slopes"].mean(0) - runs["none"].mean(0)
    spread = (runs["none"].var(0) / 6 + runs["view_slopes"].var(0) / 6).sqrt()
    assert torch.isfinite(runs["view_slopes"]).all()
    assert float((diff.abs() / spread.clamp_min(1e-9)).median()) < 2.0


def test_bfloat16_slopes_are_the_float32_slopes_rounded():
    """The job takes its slopes in the tails' dtype; in bfloat16 they differ from float32's by
    rounding, a small part of their size, at a non-linear tail too."""
    _, split, acts, labels = cut("feat", 8)
    q32 = view_slopes(split.tails["feat"], acts, labels, 0.5, None, "logit", 4)
    q16 = view_slopes(split.tails["feat"], acts, labels, 0.5, None, "logit", 4, torch.bfloat16)
    assert q16.dtype == torch.float64 and torch.isfinite(q16).all()
    assert float((q16 - q32).norm() / q32.norm()) < 0.05
