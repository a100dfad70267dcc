"""From streamed sums to the sparse fit: the solve of a layer and the held-out split.

Per layer: the exact mask moments of the samples, the covariances G and r (``stats``), then the
Lasso of every class at once (``lasso``). ``solve_layer`` is that one solve (penalty lam_c =
alpha_c * lambda_max_c); a job's fit (``chip_fast.distill.result``), a refit with another
penalty or with penalties chosen on held-out samples and the held-out R^2 (``refit``) and the
stability estimates (``stability``) all go through it. Classes that got different sample counts
(a distil-until-stable job) are solved in groups of equal count (``layer_covariances``).

Held-out samples. The sums are kept per fold (sample i is in fold i % F). Fold F-1 is held out;
the other folds T give G_T, r_T and the means zbar_T, ybar_T. For weights w, the held-out
squared error of a class, with u_i = z_i - zbar_T and d_i = y_i - ybar_T over the held-out
samples H (METHOD.md's prediction y = ybar + (z - zbar)^T w, fitted on T), is

    E(w) = sum_H (d_i - u_i^T w)^2 = sum_H d_i^2 - 2 w^T sum_H u_i d_i + w^T (sum_H u_i u_i^T) w
    sum_H d_i^2      = Syy_H - 2 ybar_T Sy_H + n_H ybar_T^2
    sum_H u_i d_i    = Szy_H - ybar_T S1_H - Sy_H zbar_T + n_H ybar_T zbar_T
    sum_H u_i u_i^T  = S2_H - S1_H zbar_T^T - zbar_T S1_H^T + n_H zbar_T zbar_T^T

where S1_H, S2_H are the held-out samples' mask moments (regenerated from the seed) and Szy_H,
Sy_H, Syy_H the stored sums of fold F-1: exact, without any sample.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .lasso import DEFAULT_MAX_ITER, DEFAULT_TOL, solve_lasso
from .stats import FoldMoments, covariances, exact_covariances, fold_moments

if TYPE_CHECKING:
    from ..importance.core import Importance

# METHOD.md's default is alpha = 0.1; the held-out choice searches around it, largest first (of
# penalties with the same held-out error, the sparsest fit wins).
DEFAULT_ALPHA_PATH = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)

# One penalty fraction for all classes, or one per row of r.
Alpha = float | torch.Tensor


def lambda_max(r: torch.Tensor, nonneg: bool) -> torch.Tensor:
    """Per row of r (C, K), the smallest penalty whose fit is zero: max_k |r_ck| (max_k r_ck
    when w >= 0)."""
    return (r.clamp(min=0) if nonneg else r.abs()).amax(1)


def solve_layer(gram: torch.Tensor, r: torch.Tensor, alpha: Alpha, *, nonneg: bool, tol: float,
                max_iter: int, where: str = "") -> torch.Tensor:
    """The Lasso of every row of ``r`` with lam_c = alpha_c * lambda_max_c: (C, K) float64.
    Warns (naming ``where``) when FISTA stops before the tolerance."""
    a = torch.as_tensor(alpha, dtype=r.dtype, device=r.device)
    if not bool(torch.isfinite(a).all() and (a >= 0).all()):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    fit = solve_lasso(gram, r, lam=a * lambda_max(r, nonneg), nonneg=nonneg, tol=tol,
                      max_iter=max_iter)
    if not fit.converged:
        warnings.warn(f"FISTA did not reach tol={tol} in {fit.iterations} iterations{where}",
                      stacklevel=3)
    return fit.weights


def class_rows(w: torch.Tensor, classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """(num_classes, K) float32 with the fitted rows of ``classes``, zero elsewhere."""
    out = torch.zeros(num_classes, w.shape[1], dtype=torch.float32)
    out[torch.tensor(list(classes))] = w.float()
    return out


def sample_counts(imp: Importance) -> torch.Tensor:
    """(C,) int64: the samples each class of ``imp.classes`` got: ``samples_per_class``, or
    per class where a distil-until-stable job stopped classes early
    (``settings["samples_reached"]``)."""
    reached = imp.settings.get("samples_reached")
    if reached is not None:
        return torch.tensor(reached, dtype=torch.int64)
    return torch.full((len(imp.classes),), int(imp.settings["samples_per_class"]),
                      dtype=torch.int64)


def count_groups(counts: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(n, the rows with n samples) for each distinct sample count, smallest first: classes
    with the same count share the mask moments, so each group is one batched solve."""
    return [(int(n), (counts == n).nonzero().flatten()) for n in torch.unique(counts)]


def moments_of(st: Mapping[str, Any], n: int, channels: int,
               device: torch.device | str = "cpu") -> FoldMoments:
    """The per-fold mask moments of samples 0..n-1 of a run with settings ``st``."""
    return fold_moments(st["seed"], n, channels, st["p_keep"], st.get("masks", "independent"),
                        st.get("folds") or 1, device)


def layer_covariances(st: Mapping[str, Any], counts: torch.Tensor, sum_zy: torch.Tensor,
                      sum_y: torch.Tensor, exact: bool, device: torch.device | str = "cpu",
                      ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(rows, G, r) of each group of classes with the same sample count (``count_groups``),
    from per-fold sums (C, F, K) and (C, F): the exact estimator's population covariances, or
    the sampled masks' moments regenerated from the seed."""
    out = []
    for n, rows in count_groups(counts):
        szy = sum_zy[rows].sum(1).to(device=device, dtype=torch.float64)
        if exact:
            gram, r = exact_covariances(szy, n, st["p_keep"])
        else:
            _, s1, s2 = moments_of(st, n, sum_zy.shape[-1], device).of()
            gram, r = covariances(s1, s2, szy, sum_y[rows].sum(1).to(device=device,
                                                                     dtype=torch.float64), n)
        out.append((rows, gram, r))
    return out


def is_exact(imp: Importance, layer: str) -> bool:
    """Whether ``imp``'s weights at ``layer`` come from the exact estimator (no samples)."""
    return (imp.settings.get("estimators") or {}).get(layer) == "exact"


def exact_r2(imp: Importance, layer: str) -> torch.Tensor:
    """Per class, the share of the baseline-adjusted response's variance over masks and views
    that the pooled linear model explains, exactly: each sample's response is linear in its
    mask with coefficients beta_i, so R^2 = |mean beta|^2 / mean |beta_i|^2 (the rest is how
    the views' coefficients differ)."""
    n = imp.sum_y[layer].to(torch.float64).sum(1)
    mean = imp.sum_zy[layer].to(torch.float64).sum(1) / n[:, None]
    return (mean * mean).sum(1) / (imp.sum_yy[layer].to(torch.float64).sum(1) / n)


# -- held-out samples ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutSplit:
    """One layer's statistics split into training folds (0..F-2) and the held-out fold F-1."""
    gram: torch.Tensor    # (K, K) G of the training samples
    r: torch.Tensor       # (C, K) r of the training samples
    quad: torch.Tensor    # (K, K) sum_H u u^T
    lin: torch.Tensor     # (C, K) sum_H u d
    const: torch.Tensor   # (C,)   sum_H d^2
    total: torch.Tensor   # (C,)   sum_H (y - ybar_H)^2, the held-out variation

    def errors(self, w: torch.Tensor) -> torch.Tensor:
        """Held-out squared error sum_H (y - ybar_T - (z - zbar_T)^T w)^2 per class of weights
        ``w`` (..., C, K) fitted on the training folds: (..., C)."""
        w = w.to(torch.float64)
        return self.const - 2 * (w * self.lin).sum(-1) + ((w @ self.quad) * w).sum(-1)

    def r2(self, w: torch.Tensor) -> torch.Tensor:
        """Held-out R^2 per class: 1 - error / sum_H (y - ybar_H)^2 (NaN for a constant
        response)."""
        return 1 - self.errors(w) / self.total


def _fold_sums(imp: Importance, layer: str) -> tuple[torch.Tensor, ...]:
    """``layer``'s per-fold sums (sum z*y, sum y, sum y^2) in float64, after checking there are
    at least 2 folds of them."""
    folds = imp.settings.get("folds")
    if is_exact(imp, layer):
        raise ValueError(f"the importance at layer {layer} is exact (no sampled response to hold "
                         "out): its fit is the limit itself")
    if layer not in imp.sum_zy or not isinstance(folds, int) or folds < 2:
        raise ValueError(
            f"a held-out check needs the per-fold sums of at least 2 folds; this importance has "
            f"{'none' if layer not in imp.sum_zy else f'folds={folds!r}'} at layer {layer} "
            "(distilled by an older chip_fast, or with folds=1): distil again")
    return tuple(getattr(imp, name)[layer].to(torch.float64)
                 for name in ("sum_zy", "sum_y", "sum_yy"))


def held_out_splits(imp: Importance, layer: str) -> list[tuple[torch.Tensor, HeldOutSplit]]:
    """``layer``'s training and held-out statistics, exactly, from ``imp``'s per-fold sums and
    the mask moments regenerated from its seed: (rows of ``imp.classes``, split) for each
    group of classes with the same sample count (one group unless a distil-until-stable job
    stopped classes at different counts)."""
    szy_all, sy_all, syy_all = _fold_sums(imp, layer)
    h = imp.settings["folds"] - 1
    out = []
    for n, rows in count_groups(sample_counts(imp)):
        m = moments_of(imp.settings, n, imp.channels(layer))
        n_t, s1_t, s2_t = m.of(range(h))
        n_h, s1, s2 = m.of([h])
        szy, sy, syy = szy_all[rows], sy_all[rows], syy_all[rows]
        gram, r = covariances(s1_t, s2_t, szy[:, :h].sum(1), sy[:, :h].sum(1), n_t)
        zbar, ybar = s1_t.to(torch.float64) / n_t, sy[:, :h].sum(1) / n_t
        s1, s2 = s1.to(torch.float64), s2.to(torch.float64)
        quad = s2 - torch.outer(s1, zbar) - torch.outer(zbar, s1) + n_h * torch.outer(zbar, zbar)
        lin = (szy[:, h] - ybar[:, None] * s1[None, :] - sy[:, h, None] * zbar[None, :]
               + n_h * ybar[:, None] * zbar[None, :])
        const = syy[:, h] - 2 * ybar * sy[:, h] + n_h * ybar ** 2
        total = syy[:, h] - sy[:, h] ** 2 / n_h
        out.append((rows, HeldOutSplit(gram, r, quad, lin, const, total)))
    return out


def choose_alpha(split: HeldOutSplit, path: Sequence[float], *, nonneg: bool, tol: float,
                 max_iter: int, where: str = "") -> torch.Tensor:
    """Per class, the alpha of ``path`` whose fit on the training folds has the smallest
    held-out error (the first of equal errors: give the path largest first). All alphas and
    classes are one batched solve: the classes share G."""
    a = torch.tensor(list(path), dtype=torch.float64)
    c = split.r.shape[0]
    w = solve_layer(split.gram, split.r.repeat(len(a), 1), a.repeat_interleave(c),
                    nonneg=nonneg, tol=tol, max_iter=max_iter, where=where)
    return a[split.errors(w.view(len(a), c, -1)).argmin(0)]


# -- what a finished Importance was fitted with ----------------------------------------------
def solve_options(st: Mapping[str, Any], nonneg: bool | None = None) -> dict[str, Any]:
    """The FISTA options a run with settings ``st`` was solved with (``nonneg`` overrides)."""
    return {"nonneg": bool(st.get("nonneg", False)) if nonneg is None else bool(nonneg),
            "tol": float(st.get("tol", DEFAULT_TOL)),
            "max_iter": int(st.get("max_iter", DEFAULT_MAX_ITER))}


def own_alpha(imp: Importance, layer: str) -> Alpha:
    """The penalty ``imp`` was fitted with at ``layer``: per class after a held-out choice."""
    chosen = imp.settings.get("alpha_chosen") or {}
    if layer in chosen:
        return torch.tensor(chosen[layer], dtype=torch.float64)
    return float(imp.settings["alpha"])


def rows_of(alpha: Alpha, rows: torch.Tensor) -> Alpha:
    """The penalties of ``rows`` of the classes (one for all stays one)."""
    return alpha[rows] if isinstance(alpha, torch.Tensor) and alpha.dim() else alpha
