"""The batched Lasso (``chip_fast.solve.lasso``): the closed form for a diagonal Gram matrix,
agreement with an independent coordinate-descent solver, and bad statistics refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chip_fast.solve.lasso import lasso_objective, solve_lasso


def brute_force_lasso(gram: np.ndarray, r: np.ndarray, lam: float, nonneg: bool) -> np.ndarray:
    """Cyclic coordinate descent to machine precision: an independent solver."""
    w = np.zeros(len(r))
    for _ in range(20000):
        old = w.copy()
        for k in range(len(r)):
            rho = r[k] - gram[k] @ w + gram[k, k] * w[k]
            v = np.sign(rho) * max(abs(rho) - lam, 0.0)
            w[k] = (max(v, 0.0) if nonneg else v) / gram[k, k]
        if np.abs(w - old).max() < 1e-14:
            break
    return w


def test_closed_form_for_diagonal_gram():
    g = torch.diag(torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=torch.float64))
    r = torch.tensor([[0.3, -0.2, 0.05, -1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    fit = solve_lasso(g, r, alpha=0.1)
    lam = 0.1 * r.abs().amax(1, keepdim=True)
    expect = torch.sign(r) * (r.abs() - lam).clamp(min=0) / torch.diag(g)
    assert fit.converged
    torch.testing.assert_close(fit.weights, expect, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_coordinate_descent(seed, nonneg):
    g = torch.Generator().manual_seed(seed)
    k, c = 12, 5
    x = torch.randn(200, k, generator=g, dtype=torch.float64)
    gram = x.t() @ x / 200
    r = torch.randn(c, k, generator=g, dtype=torch.float64)
    fit = solve_lasso(gram, r, alpha=0.2, nonneg=nonneg, tol=1e-11, max_iter=100000)
    assert fit.converged
    for j in range(c):
        ref = brute_force_lasso(gram.numpy(), r[j].numpy(), float(fit.lam[j]), nonneg)
        np.testing.assert_allclose(fit.weights[j].numpy(), ref, atol=1e-7)
    if nonneg:
        assert (fit.weights >= 0).all()
    # No point nearby has a lower objective.
    w = fit.weights.t()
    base = lasso_objective(gram, r.t(), fit.lam, w)
    for _ in range(5):
        probe = w + 1e-4 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        if nonneg:
            probe = probe.clamp(min=0)
        assert (lasso_objective(gram, r.t(), fit.lam, probe) >= base - 1e-12).all()


def test_alpha_one_zeroes_everything():
    gram = torch.eye(3, dtype=torch.float64)
    r = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    assert solve_lasso(gram, r, alpha=1.0).weights.abs().max() == 0


def test_rejects_bad_statistics():
    with pytest.raises(ValueError, match="NaN"):
        solve_lasso(torch.eye(2, dtype=torch.float64),
                    torch.tensor([[float("nan"), 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="square"):
        solve_lasso(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))




def test_the_momentum_schedule_is_fistas():
    """t_1 = 1, t_{i+1} = (1 + sqrt(1 + 4 t_i^2)) / 2, momentum (t_i - 1) / t_{i+1}: fixed in
    advance, so a device solve copies the whole schedule once."""
    from chip_fast.solve.lasso import fista_momenta
    m = fista_momenta(4)
    t2 = (1 + 5 ** 0.5) / 2
    t3 = (1 + (1 + 4 * t2 * t2) ** 0.5) / 2
    assert m[0] == 0.0 and m[1] == (t2 - 1) / t3
    assert all(0 <= x < 1 for x in fista_momenta(5000))
