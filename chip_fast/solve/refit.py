"""Refits of a finished ``Importance`` from its statistics: another penalty, penalties chosen on
held-out samples, and the held-out R^2 (the math of the held-out split is ``fit``'s).

A refit never builds an Importance of its own: it is a copy of one with new weights (and its
stability estimated again, ``stability``)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .fit import (DEFAULT_ALPHA_PATH, Alpha, choose_alpha, class_rows, exact_r2, held_out_splits,
                  is_exact, layer_covariances, own_alpha, rows_of, sample_counts, solve_layer,
                  solve_options)
from .stability import with_stability

if TYPE_CHECKING:
    from ..importance.core import Importance


def _layer_grams(imp: Importance, layer: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, G) per group of classes with the same sample count: the file's G where every
    class has the count it was made for, else regenerated from the seed."""
    counts = sample_counts(imp)
    if bool((counts == counts.max()).all()):
        return [(torch.arange(len(counts)), imp.gram[layer])]
    return [(rows, gram) for rows, gram, _ in layer_covariances(
        imp.settings, counts, imp.sum_zy[layer], imp.sum_y[layer], is_exact(imp, layer))]


def _choose_alphas(imp: Importance, layer: str, path: Sequence[float],
                   opts: dict[str, Any]) -> Alpha:
    """Per class, the alpha of ``path`` with the smallest held-out error at ``layer`` (an exact
    layer has no sampling noise to trade sparsity against: it keeps its own)."""
    if is_exact(imp, layer):
        return own_alpha(imp, layer)
    chosen = torch.empty(len(imp.classes), dtype=torch.float64)
    for rows, split in held_out_splits(imp, layer):
        chosen[rows] = choose_alpha(split, path, where=f" at layer {layer} (alpha path)", **opts)
    return chosen


def refit_importance(imp: Importance, alpha: float | str, *,
                     alphas: Sequence[float] | None = None,
                     nonneg: bool | None = None) -> Importance:
    """``imp`` fitted again from its statistics with penalty fraction ``alpha`` (and ``nonneg``,
    by default the file's): the same weights a distillation with that alpha gives.

    ``alpha="heldout"``: per class and layer, the alpha of ``alphas`` (default
    ``DEFAULT_ALPHA_PATH``) whose fit on folds 0..F-2 predicts fold F-1 best, then the fit on
    all folds with it; the settings record ``alpha_path`` and ``alpha_chosen`` ({layer: one
    alpha per class of ``imp.classes``})."""
    opts = solve_options(imp.settings, nonneg)
    missing = [l for l in imp.layers if l not in imp.gram]
    if missing:
        raise ValueError(f"layers {missing} carry no statistics (gram, r) to refit from")
    settings = {k: v for k, v in imp.settings.items() if k not in ("alpha_path", "alpha_chosen")}
    if alpha == "heldout":
        path = sorted({float(a) for a in (DEFAULT_ALPHA_PATH if alphas is None else alphas)},
                      reverse=True)
        if not path:
            raise ValueError("alphas is empty: give the penalties to choose from")
        per_layer: dict[str, Alpha] = {l: _choose_alphas(imp, l, path, opts) for l in imp.layers}
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
    weights = {}
    for l in imp.layers:
        w = torch.empty(imp.r[l].shape, dtype=torch.float64)
        for rows, gram in _layer_grams(imp, l):
            w[rows] = solve_layer(gram, imp.r[l][rows], rows_of(per_layer[l], rows),
                                  where=f" at layer {l}", **opts)
        weights[l] = class_rows(w, imp.classes, imp.num_classes)
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
    opts = solve_options(imp.settings, nonneg)
    out = {}
    for layer in imp.layers:
        if is_exact(imp, layer):
            out[layer] = exact_r2(imp, layer)
            continue
        a = own_alpha(imp, layer) if alpha is None else alpha
        r2 = torch.empty(len(imp.classes), dtype=torch.float64)
        for rows, split in held_out_splits(imp, layer):
            r2[rows] = split.r2(solve_layer(split.gram, split.r, rows_of(a, rows),
                                            where=f" at layer {layer} (held-out fit)", **opts))
        out[layer] = r2
    return out
