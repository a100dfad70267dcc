"""The result of a job whose every unit is done: its sums solved into an ``Importance``.

Everything the file records about how the importance was made comes from the plan (settings,
views, tail paths, memory budget) and the state (sums, fill statistics, atlas): nothing is
patched into the result afterwards."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..importance.core import Importance
from ..solve.fit import class_rows, layer_covariances, solve_layer
from ..solve.stability import with_stability
from ..version import __version__
from .plan import DistillPlan
from .slopes import layer_sums
from .state import DistillState


def fit_importance(plan: DistillPlan, state: DistillState,
                   device: torch.device | str = "cpu") -> Importance:
    """The Importance of a job whose every unit is done. The mask moments and the solve run on
    ``device`` (the job's: on a GPU the FISTA steps are the fused prox kernel), in float64: G's
    entries are differences of counts of up to 10^5 samples, and the fit's KKT test goes to
    1e-6 of max |r|, below float32's resolution of such sums."""
    st = plan.settings
    counts = state.sample_counts()
    weights, grams, rs, control_b = {}, {}, {}, {}
    sums = {layer: layer_sums(plan, state, layer, counts) for layer in plan.layers}
    for layer in plan.layers:
        w = torch.empty(len(plan.classes), plan.channels[layer], dtype=torch.float64)
        r_all = torch.empty_like(w)
        szy, sy, _, b = sums[layer]
        if b is not None:
            control_b[layer] = b.tolist()
        for rows, gram, r in layer_covariances(
                dataclasses.asdict(st), counts, szy, sy, plan.estimators[layer] == "exact",
                device):
            w[rows] = solve_layer(gram, r, st.alpha, nonneg=st.nonneg, tol=st.tol,
                                  max_iter=st.max_iter, where=f" at layer {layer}").cpu()
            r_all[rows] = r.cpu()
            grams[layer] = gram.cpu()   # the largest count's G (the groups come smallest first)
        weights[layer] = class_rows(w, plan.classes, plan.num_classes)
        rs[layer] = r_all
    settings: dict[str, Any] = dataclasses.asdict(st)
    settings["chip_fast_version"] = __version__
    settings["views_per_class"] = {str(c): v for c, v in plan.views.views.items()}
    settings["paths"] = dict(plan.paths)
    settings["estimators"] = dict(plan.estimators)
    if control_b:
        settings["controls"] = dict(plan.controls)
        settings["control_coefficients"] = control_b
    if st.until_stable is not None:
        settings["samples_reached"] = counts.tolist()
    if plan.max_memory is not None:
        settings["max_memory"] = str(plan.max_memory)
    complete = lambda xs: list(xs) if xs and len(xs) == plan.num_classes else None  # noqa: E731
    return with_stability(Importance(weights=weights, classes=list(plan.classes), num_classes=plan.num_classes,
                      fingerprint=plan.fingerprint, settings=settings,
                      class_ids=complete(plan.class_ids),
                      class_names=complete(plan.class_names),
                      gram=grams, r=rs,
                      sum_zy={l: s[0] for l, s in sums.items()},
                      sum_y={l: s[1] for l, s in sums.items()},
                      sum_yy={l: s[2] for l, s in sums.items()},
                      fill_mean={l: m.cpu() for l, m in state.mu.items()},
                      fill_std={l: m.cpu() for l, m in state.sigma.items()},
                      atlas=state.atlas))
