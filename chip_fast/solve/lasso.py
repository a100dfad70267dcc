"""Stage 1 sparse regression: batched FISTA for all classes at once.

For every class c:  min_w  1/2 w^T G w - r_c^T w + lam_c |w|_1   (optionally w >= 0),
with G the (K, K) covariance of the keep masks, shared by all classes because they share the
mask stream, and r_c the covariance of the masks with the class's response. One iteration for
all classes is one (K, K) @ (K, C) product plus an element-wise epilogue (``fista_step``).

This module owns the solve around the step: penalties, step size, momentum schedule and the
stopping test. The iteration itself is the op ``chip_fast.ops.prox`` (reference and kernel
dispatch), which this module may not duplicate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops.prox import fista_scalars, fista_step


@dataclass
class SolveResult:
    weights: torch.Tensor       # (C, K)
    iterations: int
    converged: bool
    lam: torch.Tensor           # (C,)


# FISTA stops when every class meets the KKT conditions to DEFAULT_TOL of its |r_c|_inf (a
# scale-free test), or after DEFAULT_MAX_ITER steps.
DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 5000


def lasso_objective(gram: torch.Tensor, r: torch.Tensor, lam: torch.Tensor, w: torch.Tensor
                    ) -> torch.Tensor:
    """Objective per class; w, r are (K, C)."""
    return 0.5 * (w * (gram @ w)).sum(0) - (r * w).sum(0) + lam * w.abs().sum(0)


def lipschitz_constant(gram: torch.Tensor, iterations: int = 100) -> float:
    """An upper bound of the largest eigenvalue of the PSD matrix ``gram``.

    Small matrices use the exact eigenvalue; large ones a power iteration, whose estimate
    (a lower bound) is raised by 2% plus the residual so the FISTA step stays safe."""
    k = gram.shape[0]
    if k <= 256:
        return float(torch.linalg.eigvalsh(gram).max())
    v = torch.ones(k, 1, dtype=gram.dtype, device=gram.device) / k ** 0.5
    est = 0.0
    for _ in range(iterations):
        u = gram @ v
        est = float(u.norm())
        if est == 0.0:
            return 0.0
        v = u / est
    residual = float((gram @ v - est * v).norm())
    return 1.02 * est + residual


def kkt_violation(gram: torch.Tensor, r: torch.Tensor, lam: torch.Tensor, w: torch.Tensor,
                  nonneg: bool) -> torch.Tensor:
    """Largest violation of the Lasso optimality conditions per class (w, r: (K, C)).

    With g = G w - r: a non-zero w_k needs g_k = -lam sign(w_k); a zero one |g_k| <= lam (or
    g_k >= -lam when w >= 0 is imposed)."""
    g = gram @ w - r
    lam = lam[None, :]
    if nonneg:
        active = (g + lam).abs()
        inactive = torch.clamp(-g - lam, min=0)
    else:
        active = (g + lam * torch.sign(w)).abs()
        inactive = torch.clamp(g.abs() - lam, min=0)
    return torch.where(w != 0, active, inactive).amax(0)


def fista_momenta(steps: int) -> list[float]:
    """The momentum (t_i - 1) / t_{i+1} of each step, t_1 = 1, t_{i+1} = (1 + sqrt(1 + 4
    t_i^2)) / 2: fixed in advance, so a device solve copies all of them at once."""
    out, t = [], 1.0
    for _ in range(steps):
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        out.append((t - 1.0) / t_next)
        t = t_next
    return out


def solve_lasso(gram: torch.Tensor, r: torch.Tensor, *, alpha: float = 0.1,
                lam: torch.Tensor | None = None, nonneg: bool = False, tol: float = DEFAULT_TOL,
                max_iter: int = DEFAULT_MAX_ITER, check_every: int = 10) -> SolveResult:
    """Solve all classes' Lasso problems with FISTA.

    gram: (K, K) symmetric PSD; r: (C, K). lam: (C,) penalties, default alpha * |r_c|_inf
    (alpha = 1 zeroes every class). Stops when every class satisfies the optimality (KKT)
    conditions to ``tol`` times its |r_c|_inf, checked every ``check_every`` iterations: a
    scale-free test that, unlike the change of the iterate, is also met quickly when fewer
    samples than channels make the solution non-unique.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square, got {tuple(gram.shape)}")
    if r.dim() != 2 or r.shape[1] != gram.shape[0]:
        raise ValueError(f"r must be (classes, {gram.shape[0]}), got {tuple(r.shape)}")
    if not (torch.isfinite(gram).all() and torch.isfinite(r).all()):
        raise ValueError("statistics contain NaN or Inf: the responses were not finite")
    rt = r.t().contiguous()
    if lam is None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        lam = alpha * (rt.clamp(min=0) if nonneg else rt.abs()).amax(0)
    lam = lam.to(gram.dtype)
    k, c = rt.shape
    lipschitz = lipschitz_constant(gram) if k else 0.0
    w = torch.zeros_like(rt)
    if lipschitz <= 0:
        return SolveResult(w.t().contiguous(), 0, True, lam)
    eta = 1.0 / lipschitz
    scale = rt.abs().amax(0).clamp(min=torch.finfo(gram.dtype).tiny)
    v = w.clone()
    momenta = fista_momenta(max_iter)
    table = fista_scalars(eta, momenta, gram)
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        w, v = fista_step(gram, w, v, rt, eta, lam, nonneg, momenta[it - 1],
                          None if table is None else table[it - 1])
        if it % check_every == 0:
            if bool((kkt_violation(gram, rt, lam, w, nonneg) <= tol * scale).all()):
                converged = True
                break
    return SolveResult(w.t().contiguous(), it, converged, lam)
