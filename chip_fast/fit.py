"""From a finished job's sums to the Importance: statistics, the sparse fit, the file's contents.

Per layer: the exact mask moments of the samples, the covariances G and r (``chip_fast.stats``),
then the Lasso of every class at once (``chip_fast.solver``). Owns what goes into the Importance
object; writing it is ``chip_fast.importance``'s.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from . import __version__
from .importance import Importance
from .plan import DistillPlan
from .solver import solve_lasso
from .state import DistillState
from .stats import covariances, mask_moments


def fit_importance(plan: DistillPlan, state: DistillState, fingerprint: dict[str, Any],
                   source) -> Importance:
    """The Importance of a job whose every unit is done."""
    st = plan.settings
    n = st.samples_per_class
    weights, grams, rs = {}, {}, {}
    for layer in plan.layers:
        k = plan.channels[layer]
        sum_z, sum_zz = mask_moments(st.seed, n, k, st.p_keep)
        gram, r = covariances(sum_z, sum_zz, state.sum_zy[layer].sum(1),
                              state.sum_y[layer].sum(1), n)
        fit = solve_lasso(gram, r, alpha=st.alpha, nonneg=st.nonneg, tol=st.tol,
                          max_iter=st.max_iter)
        if not fit.converged:
            warnings.warn(f"FISTA did not reach tol={st.tol} in {fit.iterations} iterations "
                          f"at layer {layer}", stacklevel=3)
        w = torch.zeros(plan.num_classes, k, dtype=torch.float32)
        w[torch.tensor(plan.classes)] = fit.weights.float()
        weights[layer], grams[layer], rs[layer] = w, gram, r
    ids = getattr(source, "class_ids", None)
    names = getattr(source, "class_names", None)
    settings: dict[str, Any] = dataclasses.asdict(st)
    settings["chip_fast_version"] = __version__
    settings["views_per_class"] = {str(c): v for c, v in plan.views.views.items()}
    complete = lambda xs: list(xs) if xs and len(xs) == plan.num_classes else None  # noqa: E731
    return Importance(weights=weights, classes=list(plan.classes), num_classes=plan.num_classes,
                      fingerprint=fingerprint, settings=settings,
                      class_ids=complete(ids), class_names=complete(names),
                      gram=grams, r=rs,
                      sum_zy=dict(state.sum_zy), sum_y=dict(state.sum_y),
                      sum_yy=dict(state.sum_yy),
                      fill_mean={l: m.cpu() for l, m in state.mu.items()},
                      fill_std={l: m.cpu() for l, m in state.sigma.items()})
