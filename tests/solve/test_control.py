"""The view-slope control variate's algebra (chip_fast.solve.control) against the same
quantities computed sample by sample, and its estimand: the adjustment keeps the regression
coefficients and cuts the noise that differing per-view slopes put into them."""
import torch

from chip_fast import rng
from chip_fast.solve.control import CONTROL_SUMS, adjusted
from chip_fast.solve.fit import moments_of
from chip_fast.solve.stats import covariances

P, FOLDS, K = 0.5, 4, 12
ST = {"seed": 7, "p_keep": P, "masks": "orthogonal", "folds": FOLDS}


def _samples(n: int, views: int, seed: int, spread: float = 1.0, mask_seed: int = ST["seed"]):
    """Masks, views, per-view slopes q, responses y = beta_v . z + noise, and the estimand:
    each view's own coefficients are beta_v = beta + spread * d_v, the slopes see d_v with
    noise, and the pooled regression estimates beta + spread * mean d."""
    gen = torch.Generator().manual_seed(seed)
    z = rng.keep_masks(mask_seed, torch.arange(n), K, P, "orthogonal", FOLDS).double()
    view = torch.arange(n) // 2 * 2 * views // n
    beta = torch.randn(K, generator=gen, dtype=torch.float64)
    d = torch.randn(views, K, generator=gen, dtype=torch.float64)
    q = 3.0 * (d + 0.3 * torch.randn(views, K, generator=gen, dtype=torch.float64)) + 1.0
    y = ((beta + spread * d[view]) * z).sum(1) + 0.2 * torch.randn(n, generator=gen,
                                                                     dtype=torch.float64)
    return z, view, q, y, beta + spread * d.mean(0)


def _streamed(z, view, q, y, classes: int = 1):
    """The per-fold sums the engine streams, one class."""
    fold = rng.fold_of(torch.arange(len(z)), FOLDS, "orthogonal")
    u = ((z - P) * q[view]).sum(1)
    out = {"zy": [], "y": [], "yy": [], **{k: [] for k in CONTROL_SUMS}}
    for f in range(FOLDS):
        s = fold == f
        out["zy"].append((z[s] * y[s, None]).sum(0))
        out["y"].append(y[s].sum())
        out["yy"].append((y[s] ** 2).sum())
        out["zu"].append((z[s] * u[s, None]).sum(0))
        out["q"].append(q[view[s]].sum(0))
        out["u"].append(u[s].sum())
        out["uu"].append((u[s] ** 2).sum())
        out["uy"].append((u[s] * y[s]).sum())
    return {k: torch.stack(v)[None].expand(classes, *torch.stack(v).shape).clone()
            for k, v in out.items()}


def test_adjusted_sums_equal_the_sample_by_sample_ones():
    n = 512
    z, view, q, y, _ = _samples(n, 40, 1)
    s = _streamed(z, view, q, y)
    zy, sy, syy, b = adjusted(ST, torch.tensor([n]), s["zy"], s["y"], s["yy"],
                              {k: s[k] for k in CONTROL_SUMS})
    # by hand: h centred per fold on the fold's own mean slope, b over all samples
    fold = rng.fold_of(torch.arange(n), FOLDS, "orthogonal")
    h = torch.empty(n, dtype=torch.float64)
    for f in range(FOLDS):
        rows = fold == f
        h[rows] = ((z[rows] - P) * (q[view[rows]] - q[view[rows]].mean(0))).sum(1)
    hc = h - h.mean()
    want_b = float((hc * (y - y.mean())).sum() / (hc * hc).sum())
    assert abs(float(b[0]) - want_b) < 1e-9 * max(1.0, abs(want_b))
    y2 = y - want_b * h
    for f in range(FOLDS):
        rows = fold == f
        assert torch.allclose(zy[0, f], (z[rows] * y2[rows, None]).sum(0), rtol=1e-9, atol=1e-8)
        assert torch.allclose(sy[0, f], y2[rows].sum(), rtol=1e-9, atol=1e-8)
        assert torch.allclose(syy[0, f], (y2[rows] ** 2).sum(), rtol=1e-9, atol=1e-8)
    assert torch.isfinite(zy).all() and torch.isfinite(b).all()


def test_constant_slopes_change_nothing():
    """Slopes equal for every view: h is 0 after centring, b is 0, the sums are the plain ones."""
    n = 256
    z, view, _, y, _ = _samples(n, 16, 2)
    q = torch.ones(16, K, dtype=torch.float64).mul(torch.arange(K, dtype=torch.float64))
    s = _streamed(z, view, q, y)
    zy, sy, syy, b = adjusted(ST, torch.tensor([n]), s["zy"], s["y"], s["yy"],
                              {k: s[k] for k in CONTROL_SUMS})
    assert float(b[0]) == 0.0
    assert torch.allclose(zy, s["zy"]) and torch.allclose(sy, s["y"])
    assert torch.allclose(syy, s["yy"])


def test_same_coefficients_less_noise():
    """Over independent runs the adjusted regression coefficients average to the plain ones'
    (the estimand) and scatter far less around them when the views' slopes differ."""
    n, views, runs = 1024, 64, 12
    plain, adj = [], []
    torch.manual_seed(0)
    for seed in range(runs):
        st = dict(ST, seed=1000 + seed)   # each run its own masks, all the same population
        z, view, q, y, truth = _samples(n, views, 100, spread=2.0, mask_seed=st["seed"])
        y = y + 0.2 * torch.randn(n, dtype=torch.float64)
        s = _streamed(z, view, q, y)
        zy, sy, _, _ = adjusted(st, torch.tensor([n]), s["zy"], s["y"], s["yy"],
                                {k: s[k] for k in CONTROL_SUMS})
        _, s1, s2 = moments_of(st, n, K).of()
        for out, (szy, ssy) in ((plain, (s["zy"], s["y"])), (adj, (zy, sy))):
            gram, r = covariances(s1, s2, szy.sum(1), ssy.sum(1), n)
            out.append(torch.linalg.solve(gram, r[0]) - truth)
    plain, adj = torch.stack(plain), torch.stack(adj)
    assert adj.pow(2).mean() < 0.3 * plain.pow(2).mean()
    # no bias beyond the runs' own scatter
    assert adj.mean(0).abs().max() < 4 * adj.std(0).max() / runs ** 0.5 + 1e-6
