"""The estimators keep the estimand (METHOD.md, "Stage 1: estimators"): the exact estimator of
affine tails is the closed-form limit and the limit of sampled runs; antithetic and independent
masks estimate the same weights; the exact R^2 is the linear model's population R^2."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.solve.fit import exact_r2


class Net(nn.Module):
    """conv -> ReLU ("feat", elementwise tail) -> conv -> ReLU ("deep", affine tail) -> pool ->
    linear."""

    def __init__(self, classes: int = 3, k: int = 6) -> None:
        super().__init__()
        self.feat = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(k, k, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.deep(self.feat(x))), 1))


@pytest.fixture
def setup():
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    return Net().eval(), (torch.randn(12, 3, 6, 6, generator=g), torch.arange(12) % 3)


def distil(model, data, layers, **kw):
    # the closed forms below are computed in float32
    return chip_fast.distill_all_classes(model, data, layers, progress=False,
                                         **{"prefix_dtype": "float32", **kw})


def closed_form(model, data, alpha=0.1, fill_mean=None):
    """S_{alpha max|beta_c|}(beta_c), beta_c = W_fc[c] * mean over the class's images of the
    spatial mean of "deep" minus the fill's mean (0 for zero fill)."""
    images, labels = data
    with torch.no_grad():
        a = model.deep(model.feat(images)).mean((2, 3))
    if fill_mean is not None:
        a = a - fill_mean
    out = torch.zeros(3, a.shape[1])
    for c in range(3):
        beta = model.fc.weight[c].detach() * a[labels == c].mean(0)
        t = alpha * beta.abs().max()
        out[c] = beta.sign() * (beta.abs() - t).clamp(min=0)
    return out


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_exact_estimator_is_the_closed_form_limit(setup, fill):
    model, data = setup
    imp = distil(model, data, ["deep"], samples_per_class=24, fill=fill)   # each image 3 pairs
    assert imp.settings["estimators"] == {"deep": "exact"}
    mean = imp.fill_mean["deep"] if fill == "mean" else None
    torch.testing.assert_close(imp.weights["deep"], closed_form(model, data, fill_mean=mean),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp.refit(0.3).weights["deep"],
                               closed_form(model, data, 0.3, fill_mean=mean),
                               rtol=1e-5, atol=1e-6)


def test_sampled_runs_converge_to_the_exact_estimator(setup):
    model, data = setup
    exact = distil(model, data, ["deep"], samples_per_class=4096)
    for masks in ("orthogonal", "antithetic", "independent"):
        sampled = distil(model, data, ["deep"], samples_per_class=4096, estimator="sampled",
                         masks=masks, alpha=0.0, seed=5)
        limit = exact.refit(0.0).weights["deep"]
        # standard error of an OLS coefficient: sqrt(residual variance / (N p (1 - p)))
        resid = (sampled.sum_yy["deep"].sum(1) / 4096
                 - (sampled.sum_y["deep"].sum(1) / 4096) ** 2).sqrt()
        se = resid / (4096 * 0.25) ** 0.5
        err = (sampled.weights["deep"] - limit).abs()
        assert (err <= 5 * se[:, None] + 1e-4).all(), (masks, err, se)


@pytest.mark.parametrize("design", ["orthogonal", "antithetic"])
def test_paired_and_independent_masks_estimate_the_same_weights(setup, design):
    model, data = setup
    runs = {m: distil(model, data, ["feat"], samples_per_class=8192, masks=m, alpha=0.0,
                      seed=11) for m in (design, "independent")}
    assert runs[design].settings["masks"] == design
    a, b = runs[design].weights["feat"], runs["independent"].weights["feat"]
    resid = (runs["independent"].sum_yy["feat"].sum(1) / 8192).sqrt()
    se = resid / (8192 * 0.25) ** 0.5
    assert ((a - b).abs() <= 6 * se[:, None] + 1e-4).all()


def test_exact_r2_is_the_population_r2_of_the_linear_model(setup):
    model, data = setup
    images, labels = data
    imp = distil(model, data, ["deep"], samples_per_class=24)
    with torch.no_grad():
        a = model.deep(model.feat(images)).mean((2, 3))
    for row, c in enumerate(imp.classes):
        betas = model.fc.weight[c].detach() * a[labels == c]        # one per image
        want = (betas.mean(0) ** 2).sum() / (betas ** 2).sum(1).mean()
        assert float(exact_r2(imp, "deep")[row]) == pytest.approx(float(want), rel=1e-5)
    assert torch.equal(imp.fit_quality()["deep"], exact_r2(imp, "deep"))


def test_softmax_responses_and_the_sampled_option_are_sampled(setup):
    model, data = setup
    assert distil(model, data, ["deep"], samples_per_class=8,
                  response="softmax").settings["estimators"] == {"deep": "sampled"}
    imp = distil(model, data, ["feat", "deep"], samples_per_class=8, estimator="sampled")
    assert imp.settings["estimators"] == {"feat": "sampled", "deep": "sampled"}


@pytest.mark.parametrize("design", ["orthogonal", "antithetic"])
def test_paired_masks_need_p_keep_one_half(setup, design):
    model, data = setup
    with pytest.raises(ValueError, match=f"{design} masks need p_keep 0.5"):
        distil(model, data, ["feat"], samples_per_class=8, masks=design, p_keep=0.7)
    imp = distil(model, data, ["feat"], samples_per_class=8, p_keep=0.7)
    assert imp.settings["masks"] == "independent"


def test_exact_layers_have_no_held_out_fold_but_keep_their_alpha_in_a_heldout_refit(setup):
    model, data = setup
    imp = distil(model, data, ["feat", "deep"], samples_per_class=64)
    refit = imp.refit("heldout")
    assert refit.settings["alpha_chosen"]["deep"] == [0.1] * 3
    torch.testing.assert_close(refit.weights["deep"], imp.weights["deep"])
    from chip_fast.solve.fit import held_out_splits
    with pytest.raises(ValueError, match="exact"):
        held_out_splits(imp, "deep")


def test_auto_masks_pair_up_where_a_sampled_response_is_not_linear(setup):
    """Pairs cancel the even part of a response; a response linear in the mask has none left
    (the per-view baseline takes its offset), so pairs would only repeat terms."""
    model, data = setup
    def design(layers, **kw):
        return distil(model, data, layers, samples_per_class=8, **kw).settings["masks"]
    assert design(["feat", "deep"]) == "orthogonal"                   # feat: elementwise tail
    assert design(["deep"]) == "independent"                          # exact: nothing sampled
    assert design(["deep"], estimator="sampled") == "independent"     # linear in the mask
    assert design(["deep"], estimator="sampled", tail_path="elementwise") == "independent"
    assert design(["deep"], estimator="sampled", response="softmax") == "orthogonal"
    assert design(["feat"], p_keep=0.7) == "independent"
