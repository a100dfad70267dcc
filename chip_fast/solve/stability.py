"""How stable a fit is, from its own per-fold sums: the predicted agreement of a class's weights
with another seed's, each weight's standard error, and the samples a target agreement needs.
All are deterministic functions of the sums (a distil-until-stable job stops classes on them),
checked against real seeds in tests/solve/test_stability.py and docs/stability.md."""
from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .fit import (Alpha, count_groups, is_exact, moments_of, own_alpha, rows_of, sample_counts,
                  solve_layer, solve_options)
from .stats import FoldMoments, covariances

if TYPE_CHECKING:
    from ..importance.core import Importance


def _fold_fit(moments: FoldMoments, sum_zy: torch.Tensor, sum_y: torch.Tensor,
              folds: Sequence[int], alpha: Alpha, opts: dict[str, Any]) -> torch.Tensor:
    """The fit of every class on the samples of ``folds`` only: (C, K) float64."""
    n, s1, s2 = moments.of(folds)
    idx = list(folds)
    gram, r = covariances(s1, s2, sum_zy[:, idx].sum(1), sum_y[:, idx].sum(1), n)
    # A part of the samples is often underdetermined where the whole is not: FISTA may stop
    # short there, which blurs an estimate of the noise but is no news for the user (the
    # whole fit warns on its own).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return solve_layer(gram, r, alpha, **opts)


def split_stability(st: Mapping[str, Any], n: int, sum_zy: torch.Tensor, sum_y: torch.Tensor,
                    alpha: Alpha, *, standard_errors: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(agreement (C,), standard errors (C, K) or None) of classes that all have ``n`` samples,
    from their per-fold sums (C, F, K), (C, F) in float64 and the run's settings ``st``.

    The agreement predicts the Pearson r of a class's weights between two runs that differ only
    in the seed: the r of the fits on the two halves of the folds, stepped up to the whole
    sample count (Spearman-Brown, 2 r / (1 + r)). The standard error of each weight is the
    spread of the one-fold fits over sqrt(folds) (batch means). Deterministic functions of the
    sums: a distil-until-stable job stops a class on this agreement."""
    f = st["folds"]
    opts = solve_options(st)
    moments = moments_of(st, n, sum_zy.shape[-1])
    half = f // 2
    a = _fold_fit(moments, sum_zy, sum_y, range(half), alpha, opts)
    b = _fold_fit(moments, sum_zy, sum_y, range(half, f), alpha, opts)
    r = _row_correlation(a, b)
    se = None
    if standard_errors:
        each = torch.stack([_fold_fit(moments, sum_zy, sum_y, [i], alpha, opts)
                            for i in range(f)])
        se = each.std(0) / f ** 0.5
    return 2 * r / (1 + r), se


def stability(imp: Importance, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(agreement (C,), standard errors (C, K)) of ``layer``'s weights, from the sums alone
    (``split_stability``, per group of classes with the same sample count). An exact layer has
    no noise: (1, 0); a file without per-fold sums of 2 folds or more: NaN."""
    c, k = len(imp.classes), imp.channels(layer)
    if is_exact(imp, layer):
        return torch.ones(c, dtype=torch.float64), torch.zeros(c, k, dtype=torch.float64)
    f = imp.settings.get("folds")
    agreement = torch.full((c,), float("nan"), dtype=torch.float64)
    se = torch.full((c, k), float("nan"), dtype=torch.float64)
    if layer not in imp.sum_zy or not isinstance(f, int) or f < 2:
        return agreement, se
    alpha = own_alpha(imp, layer)
    szy, sy = (getattr(imp, name)[layer].to(torch.float64) for name in ("sum_zy", "sum_y"))
    for n, rows in count_groups(sample_counts(imp)):
        agreement[rows], se[rows] = split_stability(imp.settings, n, szy[rows], sy[rows],
                                                    rows_of(alpha, rows))
    return agreement, se


def samples_for(imp: Importance, layer: str, target: float) -> torch.Tensor:
    """(C,) float64: the samples per class at which ``layer``'s predicted seed agreement would
    reach ``target``, from the agreement at the class's own sample count. The noise of the
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
    n = sample_counts(imp).to(torch.float64)
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
