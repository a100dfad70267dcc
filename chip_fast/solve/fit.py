"""From streamed sums to the sparse fit: the solve of a layer, refits, and held-out checks.

Per layer: the exact mask moments of the samples, the covariances G and r (``stats``), then the
Lasso of every class at once (``lasso``). ``solve_layer`` is that one solve (penalty lam_c =
alpha_c * lambda_max_c); a job's fit (``chip_fast.distill.result``), a refit with another
penalty or with penalties chosen on held-out samples (``refit_importance``) and the held-out
R^2 (``held_out_r2``) all go through it.

Held-out samples. The sums are kept per fold (sample i is in fold i % F). Fold F-1 is held out;
the other folds T give G_T, r_T and the means zbar_T, ybar_T. For weights w, the held-out
squared error of a class, with u_i = z_i - zbar_T and d_i = y_i - ybar_T over the held-out
samples H (METHOD.md's prediction y = ybar + (z - zbar)^T w, fitted on T), is

    E(w) = sum_H (d_i - u_i^T w)^2 = sum_H d_i^2 - 2 w^T sum_H u_i d_i + w^T (sum_H u_i u_i^T) w
    sum_H d_i^2      = Syy_H - 2 ybar_T Sy_H + n_H ybar_T^2
    sum_H u_i d_i    = Szy_H - ybar_T S1_H - Sy_H zbar_T + n_H ybar_T zbar_T
    sum_H u_i u_i^T  = S2_H - S1_H zbar_T^T - zbar_T S1_H^T + n_H zbar_T zbar_T^T

where S1_H, S2_H are the held-out samples' mask moments (regenerated from the seed) and Szy_H,
Sy_H, Syy_H the stored sums of fold F-1: exact, without any sample. It never builds an
Importance of its own: a refit is a copy of one with new weights.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .. import rng
from .lasso import DEFAULT_MAX_ITER, DEFAULT_TOL, solve_lasso
from .stats import covariances, mask_moments_of

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


def held_out_split(imp: Importance, layer: str) -> HeldOutSplit:
    """``layer``'s training and held-out statistics, exactly, from ``imp``'s per-fold sums and
    the mask moments regenerated from its seed."""
    st = imp.settings
    folds = st.get("folds")
    if is_exact(imp, layer):
        raise ValueError(f"the importance at layer {layer} is exact (no sampled response to hold "
                         "out): its fit is the limit itself")
    if layer not in imp.sum_zy or not isinstance(folds, int) or folds < 2:
        raise ValueError(
            f"a held-out check needs the per-fold sums of at least 2 folds; this importance has "
            f"{'none' if layer not in imp.sum_zy else f'folds={folds!r}'} at layer {layer} "
            "(distilled by an older chip_fast, or with folds=1): distil again")
    n, k, h = st["samples_per_class"], imp.channels(layer), folds - 1
    design = st.get("masks", "independent")   # files before the designs: independent
    samples = torch.arange(n)
    fold = rng.fold_of(samples, folds, design)
    s1_t, s2_t = mask_moments_of(st["seed"], samples[fold != h], k, st["p_keep"], design=design,
                                 folds=folds)
    s1_h, s2_h = mask_moments_of(st["seed"], samples[fold == h], k, st["p_keep"], design=design,
                                 folds=folds)
    n_h = int((fold == h).sum())
    n_t = n - n_h
    szy, sy, syy = (getattr(imp, name)[layer].to(torch.float64)
                    for name in ("sum_zy", "sum_y", "sum_yy"))
    gram, r = covariances(s1_t, s2_t, szy[:, :h].sum(1), sy[:, :h].sum(1), n_t)
    zbar, ybar = s1_t.to(torch.float64) / n_t, sy[:, :h].sum(1) / n_t
    s1, s2 = s1_h.to(torch.float64), s2_h.to(torch.float64)
    quad = s2 - torch.outer(s1, zbar) - torch.outer(zbar, s1) + n_h * torch.outer(zbar, zbar)
    lin = (szy[:, h] - ybar[:, None] * s1[None, :] - sy[:, h, None] * zbar[None, :]
           + n_h * ybar[:, None] * zbar[None, :])
    const = syy[:, h] - 2 * ybar * sy[:, h] + n_h * ybar ** 2
    total = syy[:, h] - sy[:, h] ** 2 / n_h
    return HeldOutSplit(gram, r, quad, lin, const, total)


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


# -- refits of a finished Importance ------------------------------------------------------------
def _solve_options(imp: Importance, nonneg: bool | None) -> dict[str, Any]:
    st = imp.settings
    return {"nonneg": bool(st.get("nonneg", False)) if nonneg is None else bool(nonneg),
            "tol": float(st.get("tol", DEFAULT_TOL)),
            "max_iter": int(st.get("max_iter", DEFAULT_MAX_ITER))}


def _own_alpha(imp: Importance, layer: str) -> Alpha:
    """The penalty ``imp`` was fitted with at ``layer``: per class after a held-out choice."""
    chosen = imp.settings.get("alpha_chosen") or {}
    if layer in chosen:
        return torch.tensor(chosen[layer], dtype=torch.float64)
    return float(imp.settings["alpha"])


def refit_importance(imp: Importance, alpha: float | str, *,
                     alphas: Sequence[float] | None = None,
                     nonneg: bool | None = None) -> Importance:
    """``imp`` fitted again from its statistics with penalty fraction ``alpha`` (and ``nonneg``,
    by default the file's): the same weights a distillation with that alpha gives.

    ``alpha="heldout"``: per class and layer, the alpha of ``alphas`` (default
    ``DEFAULT_ALPHA_PATH``) whose fit on folds 0..F-2 predicts fold F-1 best, then the fit on
    all folds with it; the settings record ``alpha_path`` and ``alpha_chosen`` ({layer: one
    alpha per class of ``imp.classes``})."""
    opts = _solve_options(imp, nonneg)
    missing = [l for l in imp.layers if l not in imp.gram]
    if missing:
        raise ValueError(f"layers {missing} carry no statistics (gram, r) to refit from")
    settings = {k: v for k, v in imp.settings.items() if k not in ("alpha_path", "alpha_chosen")}
    if alpha == "heldout":
        path = sorted({float(a) for a in (DEFAULT_ALPHA_PATH if alphas is None else alphas)},
                      reverse=True)
        if not path:
            raise ValueError("alphas is empty: give the penalties to choose from")
        # An exact layer has no sampling noise to trade sparsity against: it keeps its alpha.
        per_layer: dict[str, Alpha] = {
            l: _own_alpha(imp, l) if is_exact(imp, l) else
            choose_alpha(held_out_split(imp, l), path, where=f" at layer {l} (alpha path)",
                         **opts) for l in imp.layers}
        settings.update(alpha_path=path,
                        alpha_chosen={l: torch.as_tensor(a, dtype=torch.float64)
                                      .expand(len(imp.classes)).tolist()
                                      for l, a in per_layer.items()})
    elif isinstance(alpha, str):
        raise ValueError(f"alpha must be a number or 'heldout', got {alpha!r}")
    else:
        per_layer = {l: float(alpha) for l in imp.layers}
    settings.update(alpha=alpha if isinstance(alpha, str) else float(alpha),
                    nonneg=opts["nonneg"])
    weights = {l: class_rows(solve_layer(imp.gram[l], imp.r[l], per_layer[l],
                                         where=f" at layer {l}", **opts),
                             imp.classes, imp.num_classes) for l in imp.layers}
    copies = {name: dict(getattr(imp, name)) for name in
              ("gram", "r", "sum_zy", "sum_y", "sum_yy", "fill_mean", "fill_std")}
    refit = dataclasses.replace(imp, weights=weights, settings=settings, **copies)
    return with_stability(refit) if imp.agreement else refit


def held_out_r2(imp: Importance, alpha: Alpha | None = None, nonneg: bool | None = None
                ) -> dict[str, torch.Tensor]:
    """Held-out R^2 per layer, one value per class of ``imp.classes`` (float64): the fit on
    folds 0..F-2 with ``imp``'s own penalty (or ``alpha``) scored on fold F-1.

    After ``refit(alpha="heldout")`` the per-class alphas were chosen on that same fold, so
    this R^2 is then slightly optimistic. A layer whose importance is exact has no held-out
    samples: its value is the population R^2 of the linear model (``exact_r2``)."""
    opts = _solve_options(imp, nonneg)
    out = {}
    for layer in imp.layers:
        if is_exact(imp, layer):
            out[layer] = exact_r2(imp, layer)
            continue
        split = held_out_split(imp, layer)
        a = _own_alpha(imp, layer) if alpha is None else alpha
        out[layer] = split.r2(solve_layer(split.gram, split.r, a,
                                          where=f" at layer {layer} (held-out fit)", **opts))
    return out


# -- how stable the fit is, from the per-fold sums ---------------------------------------------
def _fold_fit(imp: Importance, layer: str, folds: Sequence[int], alpha: Alpha,
              opts: dict[str, Any]) -> torch.Tensor:
    """The fit of every class on the samples of ``folds`` only: (C, K) float64."""
    st = imp.settings
    n, k, f = st["samples_per_class"], imp.channels(layer), st["folds"]
    design = st.get("masks", "independent")
    samples = torch.arange(n)
    chosen = torch.isin(rng.fold_of(samples, f, design), torch.tensor(list(folds)))
    s1, s2 = mask_moments_of(st["seed"], samples[chosen], k, st["p_keep"], design=design,
                             folds=f)
    szy, sy = (getattr(imp, name)[layer].to(torch.float64)[:, list(folds)].sum(1)
               for name in ("sum_zy", "sum_y"))
    gram, r = covariances(s1, s2, szy, sy, int(chosen.sum()))
    # A part of the samples is often underdetermined where the whole is not: FISTA may stop
    # short there, which blurs an estimate of the noise but is no news for the user (the
    # whole fit warns on its own).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return solve_layer(gram, r, alpha, where=f" at layer {layer} (folds {list(folds)})",
                           **opts)


def stability(imp: Importance, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(agreement (C,), standard errors (C, K)) of ``layer``'s weights, from the sums alone.

    The agreement predicts the Pearson r of a class's weights between two runs that differ only
    in the seed: the r of the fits on the two halves of the folds, stepped up to the whole
    sample count (Spearman-Brown, 2 r / (1 + r)). The standard error of each weight is the
    spread of the one-fold fits over sqrt(folds) (batch means); both are estimates of the same
    noise, deterministic functions of the sums. An exact layer has no noise: (1, 0)."""
    c, k = len(imp.classes), imp.channels(layer)
    if is_exact(imp, layer):
        return torch.ones(c, dtype=torch.float64), torch.zeros(c, k, dtype=torch.float64)
    f = imp.settings.get("folds")
    if layer not in imp.sum_zy or not isinstance(f, int) or f < 2:
        nan = torch.full((c,), float("nan"), dtype=torch.float64)
        return nan, torch.full((c, k), float("nan"), dtype=torch.float64)
    opts, alpha = _solve_options(imp, None), _own_alpha(imp, layer)
    half = f // 2
    a = _fold_fit(imp, layer, range(half), alpha, opts)
    b = _fold_fit(imp, layer, range(half, f), alpha, opts)
    r = _row_correlation(a, b)
    each = torch.stack([_fold_fit(imp, layer, [i], alpha, opts) for i in range(f)])
    return 2 * r / (1 + r), each.std(0) / f ** 0.5


def samples_for(imp: Importance, layer: str, target: float) -> torch.Tensor:
    """(C,) float64: the samples per class at which ``layer``'s predicted seed agreement would
    reach ``target``, from the agreement at the file's own sample count. The noise of the
    weights falls as 1 / n, so the agreement follows Spearman-Brown: at m = n * t (1 - a) /
    (a (1 - t)) samples an agreement a becomes t (0 for an exact layer, whose agreement is 1).
    A class with no estimate (an older file, a single fold) gets NaN, one whose agreement is
    not positive inf. Checked against the measured curves in
    docs/stability.md."""
    if not 0 < target < 1:
        raise ValueError(f"target must be an agreement between 0 and 1, got {target!r}")
    a = imp.agreement.get(layer)
    if a is None:
        return torch.full((len(imp.classes),), float("nan"), dtype=torch.float64)
    a = a.to(torch.float64)
    n = float(imp.settings["samples_per_class"])
    m = (n * target * (1 - a) / (a * (1 - target))).clamp(min=0)   # NaN stays NaN
    return torch.where(a <= 0, torch.full_like(a, float("inf")), m)


def _row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson r of each row of a with the same row of b (0 where a row is constant)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = (a.norm(dim=1) * b.norm(dim=1))
    return torch.where(den > 0, (a * b).sum(1) / den.clamp(min=1e-300), torch.zeros_like(den))


def with_stability(imp: Importance) -> Importance:
    """``imp`` with its ``agreement`` and ``weight_se`` of every layer (``stability``)."""
    agreement, weight_se = {}, {}
    for layer in imp.layers:
        a, se = stability(imp, layer)
        agreement[layer], weight_se[layer] = a, se.float()
    return dataclasses.replace(imp, agreement=agreement, weight_se=weight_se)

