"""Refits from the stored statistics and held-out checks (``chip_fast.solve.fit``), against
references built from explicit samples: a tiny conv -> ReLU -> global mean -> linear model distilled
with fill="zero", so every response y_i = s_c(head(z_i * m_c)) is computed here by hand from the
regenerated masks z_i and the class image's channel means m_c, and every statistic, Lasso fit
(coordinate descent, not FISTA) and held-out error is recomputed from those samples directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import chip_fast
from chip_fast import rng
from chip_fast.solve.fit import held_out_splits

K, CLASSES, N, FOLDS, SEED, P_KEEP = 12, 3, 64, 4, 5, 0.5
LAYER = "features"
DESIGN = "orthogonal"   # the default design at p_keep 0.5: samples by hand follow it


class Planted(nn.Module):
    """logits = W mean_hw(ReLU(conv(x))) + b: linear in the channel means of ``features``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, K, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(K, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(3)
    model = Planted().eval()
    with torch.no_grad():   # sparse, sizeable class rows: a support for the Lasso to find
        model.classifier.weight.mul_(4 * (torch.rand(CLASSES, K) < 0.5))
    images = torch.randn(CLASSES, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    return model, (images, torch.arange(CLASSES))


def distil(model, data, **kw) -> chip_fast.Importance:
    # sampled: at this affine layer the logit would otherwise get the exact estimator, which
    # has no samples to hold out (tests/distill/test_estimators.py); a float32 prefix, as the
    # sums by hand below
    kw = {"samples_per_class": N, "seed": SEED, "p_keep": P_KEEP, "fill": "zero", "folds": FOLDS,
          "progress": False, "estimator": "sampled", "prefix_dtype": "float32", **kw}
    return chip_fast.distill_all_classes(model, data, [LAYER], **kw)


def samples_by_hand(model, data, response: str, design: str = DESIGN
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Masks z (N, K) and responses y (CLASSES, N) of every sample, float64, by hand."""
    images, _ = data
    with torch.no_grad():
        m = model.features(images).double().mean((2, 3))                    # (classes, K)
        w, b = model.classifier.weight.double(), model.classifier.bias.double()
    z = rng.keep_masks(SEED, torch.arange(N), K, P_KEEP, design, FOLDS).double()   # (N, K)
    logits = torch.einsum("nk,ck,jk->cnj", z, m, w) + b                    # (class, n, out)
    if response == "softmax":
        logits = torch.softmax(logits, -1)
    y = torch.stack([logits[c, :, c] for c in range(CLASSES)])
    return z.numpy(), y.numpy()


def moments(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G (K, K) and r (C, K) of explicit samples, as METHOD.md defines them."""
    zc = z - z.mean(0)
    yc = y - y.mean(1, keepdims=True)
    return zc.T @ zc / len(z), yc @ zc / len(z)


def lasso_cd(gram: np.ndarray, r: np.ndarray, lam: float, nonneg: bool = False) -> np.ndarray:
    """min 1/2 w'Gw - r'w + lam |w|_1 by cyclic coordinate descent (an independent solver)."""
    w = np.zeros(len(r))
    for _ in range(20000):
        before = w.copy()
        for k in range(len(r)):
            rho = r[k] - gram[k] @ w + gram[k, k] * w[k]
            v = np.sign(rho) * max(abs(rho) - lam, 0.0) / gram[k, k]
            w[k] = max(v, 0.0) if nonneg else v
        if np.abs(w - before).max() < 1e-14:
            break
    return w


def fold_split(z, y, design: str = DESIGN):
    held = (rng.fold_of(torch.arange(N), FOLDS, design) == FOLDS - 1).numpy()
    return (z[~held], y[:, ~held]), (z[held], y[:, held])


def held_out_error(train, test, w: np.ndarray, c: int) -> float:
    """sum over held-out samples of (y - ybar_T - (z - zbar_T)' w)^2, sample by sample."""
    (zt, yt), (zh, yh) = train, test
    pred = yt[c].mean() + (zh - zt.mean(0)) @ w
    return float(((yh[c] - pred) ** 2).sum())


def test_held_out_statistics_equal_direct_sums_over_samples(planted):
    model, data = planted
    imp = distil(model, data, response="softmax")
    z, y = samples_by_hand(model, data, "softmax")
    train, test = fold_split(z, y)
    [(rows, split)] = held_out_splits(imp, LAYER)
    assert rows.tolist() == list(range(CLASSES))
    gram, r = moments(*train)
    np.testing.assert_allclose(split.gram.numpy(), gram, atol=1e-12)
    np.testing.assert_allclose(split.r.numpy(), r, rtol=1e-5, atol=1e-9)
    w = np.random.default_rng(0).normal(size=(CLASSES, K)) * 0.01
    direct = [held_out_error(train, test, w[c], c) for c in range(CLASSES)]
    np.testing.assert_allclose(split.errors(torch.from_numpy(w)).numpy(), direct, rtol=1e-5)
    yh = test[1]
    np.testing.assert_allclose(split.total.numpy(), ((yh - yh.mean(1, keepdims=True)) ** 2).sum(1),
                               rtol=1e-5)


@pytest.mark.parametrize("nonneg", [False, True])
def test_refit_equals_a_fresh_distillation_with_that_alpha(planted, nonneg):
    model, data = planted
    imp = distil(model, data, response="softmax")
    again = imp.refit(0.03, nonneg=nonneg)
    fresh = distil(model, data, response="softmax", alpha=0.03, nonneg=nonneg)
    torch.testing.assert_close(again.weights[LAYER], fresh.weights[LAYER], rtol=1e-6, atol=1e-9)
    assert again.settings["alpha"] == 0.03 and again.settings["nonneg"] == nonneg
    assert imp.settings["alpha"] == 0.1                     # the original is left alone
    z, y = samples_by_hand(model, data, "softmax")
    gram, r = moments(z, y)
    for c in range(CLASSES):
        lam = 0.03 * (r[c].clip(0) if nonneg else np.abs(r[c])).max()
        np.testing.assert_allclose(again.weights[LAYER][c].numpy(),
                                   lasso_cd(gram, r[c], lam, nonneg), atol=1e-5)


def test_heldout_alpha_is_the_argmin_of_brute_force_errors(planted, tmp_path):
    model, data = planted
    path = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)
    # independent masks: their noise is what makes the planted choice non-trivial (paired
    # designs cancel most of it, and then the least penalty wins for every class)
    imp = distil(model, data, response="softmax", masks="independent").refit("heldout",
                                                                             alphas=path)
    chosen = imp.settings["alpha_chosen"][LAYER]
    assert imp.settings["alpha"] == "heldout" and imp.settings["alpha_path"] == list(path)
    z, y = samples_by_hand(model, data, "softmax", design="independent")
    train, test = fold_split(z, y, design="independent")
    gram_t, r_t = moments(*train)
    gram, r = moments(z, y)
    for c in range(CLASSES):
        errors = [held_out_error(train, test, lasso_cd(gram_t, r_t[c],
                                                       a * np.abs(r_t[c]).max()), c)
                  for a in path]
        assert errors[path.index(chosen[c])] <= min(errors) * (1 + 1e-6), (c, chosen, errors)
        np.testing.assert_allclose(imp.weights[LAYER][c].numpy(),
                                   lasso_cd(gram, r[c], chosen[c] * np.abs(r[c]).max()),
                                   atol=1e-5)
    assert len(set(chosen)) > 1 or chosen[0] not in (path[0], path[-1]), \
        "the planted problem should make the choice non-trivial"
    back = chip_fast.load_importance(imp.save(tmp_path / "heldout.chip"))
    assert back.settings["alpha_chosen"] == imp.settings["alpha_chosen"]


def test_r2_of_a_noiseless_planted_linear_model_is_one(planted):
    """With the logit response and zero fill, y is exactly linear in z: the unpenalised fit
    recovers the planted coefficients W[c, k] * m_ck and predicts held-out samples perfectly."""
    model, data = planted
    imp = distil(model, data, response="logit")
    r2 = imp.fit_quality(alpha=0.0)[LAYER]
    assert r2.shape == (CLASSES,) and (r2 > 1 - 1e-9).all(), r2
    with torch.no_grad():
        planted_w = model.classifier.weight * model.features(data[0]).mean((2, 3))
    torch.testing.assert_close(imp.refit(0.0).weights[LAYER], planted_w, atol=1e-4, rtol=1e-4)
    # a response linear in the mask: masks="auto" draws them independently (pairs would only
    # repeat terms); at the default penalty the fit shrinks, and its R^2 is the one computed
    # sample by sample
    assert imp.settings["masks"] == "independent"
    z, y = samples_by_hand(model, data, "logit", design="independent")
    train, test = fold_split(z, y, design="independent")
    gram_t, r_t = moments(*train)
    for c, got in enumerate(imp.fit_quality()[LAYER].tolist()):
        w = lasso_cd(gram_t, r_t[c], 0.1 * np.abs(r_t[c]).max())
        yh = test[1][c]
        expect = 1 - held_out_error(train, test, w, c) / ((yh - yh.mean()) ** 2).sum()
        assert got == pytest.approx(expect, abs=1e-6) and 0.5 < got < 1


def test_heldout_needs_folds(planted):
    model, data = planted
    imp = distil(model, data, folds=1)
    with pytest.raises(ValueError, match="at least 2 folds"):
        imp.refit("heldout")
    with pytest.raises(ValueError, match="'heldout'"):
        imp.refit("best")


def test_solve_layer_warns_when_fista_stops_short():
    from chip_fast.solve.fit import solve_layer
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 12, generator=g, dtype=torch.float64)
    gram, r = a.t() @ a / 40, torch.randn(3, 12, generator=g, dtype=torch.float64)
    with pytest.warns(UserWarning, match="FISTA did not reach tol=1e-12 in 1 iterations at x"):
        w = solve_layer(gram, r, 0.1, nonneg=False, tol=1e-12, max_iter=1, where=" at x")
    assert w.shape == (3, 12) and torch.isfinite(w).all()
