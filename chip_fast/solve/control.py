"""The view-slope control variate's sums, folded into the response sums the fit reads.

Where a layer's tail is not affine, the views' own regression coefficients differ, and that
difference is most of the seed noise (docs/stability.md). Each view v gets a slope q_v (its mask
gradient at the mean-masked activation, ``chip_fast.distill.slopes``), and each sample the term
``h_i = (q_v - qbar) . (z_i - p)`` with qbar the mean of q over the fold's samples (each view
counted as often as the samples use it). For any fixed q, the population regression of h on the
mask is ``mean_i (q_v - qbar) = 0``, so regressing ``y - b h`` on the mask keeps the estimand, and
``b`` (one per class, least squares over all its samples) takes out what of y the views' slopes
predict.

The engine streams, per (class, fold), the sums of the uncentred ``u_i = q_v . (z_i - p)``:
sum z u (K), sum q over the samples (K), sum u, sum u^2 and sum u y. With the fold's exact mask
moments these give the sums of the centred h (``centred``), and the response sums of ``y - b h``
(``adjusted``): the fit, ``refit``, the split-half stability and the file all read those, as if
the responses had been ``y - b h`` from the start.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .fit import count_groups, moments_of

# Names of the streamed sums, per (class, fold): sum z u (K), sum q (K), sum u, sum u^2, sum u y.
CONTROL_SUMS = ("zu", "q", "u", "uu", "uy")


def centred(p: float, count: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
            sums: Mapping[str, torch.Tensor], sum_zy: torch.Tensor, sum_y: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum z h (C, F, K), sum h, sum h^2, sum h y (C, F)) of the centred term, from the streamed
    sums (C, F, ...) and the folds' mask moments: ``count`` (F,), ``s1`` (F, K), ``s2``
    (F, K, K)."""
    n = count.to(torch.float64).clamp_min(1)                          # (F,)
    qbar = sums["q"] / n[None, :, None]                               # (C, F, K)
    s1, s2 = s1.to(torch.float64), s2.to(torch.float64)
    # sum_i z_i (z_i - p)^T qbar = S2 qbar - p s1 (1 . qbar)
    zh = (sums["zu"] - torch.einsum("fkj,cfj->cfk", s2, qbar)
          + p * s1[None] * qbar.sum(-1, keepdim=True))
    dz = s1 - p * n[:, None]                                          # sum (z - p), (F, K)
    h = sums["u"] - (dz[None] * qbar).sum(-1)
    # sum (z - p) u = sum z u - p sum u; sum (z - p)(z - p)^T = S2 - p (s1 1^T + 1 s1^T) + n p^2
    zu_c = sums["zu"] - p * sums["u"][..., None]
    quad = (torch.einsum("cfk,fkj,cfj->cf", qbar, s2, qbar)
            - 2 * p * (s1[None] * qbar).sum(-1) * qbar.sum(-1)
            + n[None] * p * p * qbar.sum(-1) ** 2)
    hh = sums["uu"] - 2 * (qbar * zu_c).sum(-1) + quad
    hy = sums["uy"] - (qbar * (sum_zy - p * sum_y[..., None])).sum(-1)
    return zh, h, hh, hy


def coefficients(n: torch.Tensor, h: torch.Tensor, hh: torch.Tensor, hy: torch.Tensor,
                 y: torch.Tensor) -> torch.Tensor:
    """(C,) least-squares coefficient of y on h per class over all its folds; 0 where h is
    constant (no slope varies)."""
    n = n.to(torch.float64)
    sh, shh, shy, sy = h.sum(1), hh.sum(1), hy.sum(1), y.sum(1)
    var = shh - sh * sh / n
    cov = shy - sh * sy / n
    ok = var > 1e-12 * shh.abs().clamp_min(1e-300)
    return torch.where(ok, cov / torch.where(ok, var, torch.ones_like(var)), torch.zeros_like(var))


def adjusted(st: Mapping[str, Any], counts: torch.Tensor, sum_zy: torch.Tensor,
             sum_y: torch.Tensor, sum_yy: torch.Tensor, sums: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-fold response sums of ``y - b h`` (sum z y (C, F, K), sum y, sum y^2 (C, F)) and
    each class's b (C,), for classes with ``counts`` samples each (the run's settings ``st``)."""
    out_zy, out_y, out_yy = sum_zy.clone(), sum_y.clone(), sum_yy.clone()
    b_all = torch.zeros(len(counts), dtype=torch.float64)
    p = float(st["p_keep"])
    for n, rows in count_groups(counts):
        m = moments_of(st, n, sum_zy.shape[-1])
        part = {k: v[rows].to(torch.float64) for k, v in sums.items()}
        zh, h, hh, hy = centred(p, m.count, m.s1, m.s2, part, sum_zy[rows], sum_y[rows])
        b = coefficients(torch.tensor(float(n)), h, hh, hy, sum_y[rows])
        bb = b[:, None]
        out_zy[rows] = sum_zy[rows] - bb[..., None] * zh
        out_y[rows] = sum_y[rows] - bb * h
        out_yy[rows] = sum_yy[rows] - 2 * bb * hy + bb * bb * hh
        b_all[rows] = b
    return out_zy, out_y, out_yy, b_all
