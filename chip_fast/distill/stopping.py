"""Distil until stable: which classes stop where a stage of samples ends.

A class stops when its predicted seed agreement (``chip_fast.solve.stability.split_stability``:
the fits on the two halves of its folds, stepped up to its sample count) reaches
``settings.until_stable`` at every sampled layer; an exact layer has no seed noise. The decision
reads the sums alone, never the clock, so a resumed or a torchrun job stops the same classes at
the same counts and writes the same file.
"""
from __future__ import annotations

import dataclasses

import torch

from ..solve.stability import split_stability
from .plan import DistillPlan, Unit
from .slopes import layer_sums
from .state import DistillState


def classes_to_stop(plan: DistillPlan, state: DistillState, unit: Unit) -> list[int]:
    """Of the classes of ``unit`` (just added, ending a stage before the cap), those stable
    enough to stop."""
    st = plan.settings
    classes = plan.unit_classes(unit)
    rows = plan.class_rows(classes)
    n = plan.unit_sample_range(unit).stop
    settings = dataclasses.asdict(st)
    stable = torch.ones(len(classes), dtype=torch.bool)
    for layer in plan.layers:
        if plan.estimators[layer] == "exact":
            continue
        szy, sy, _, _ = layer_sums(plan, state, layer, torch.full((len(rows),), n), rows)
        agreement, _ = split_stability(settings, n, szy, sy, st.alpha, standard_errors=False)
        stable &= agreement >= st.until_stable   # NaN (a constant response) never stops
    return [c for c, ok in zip(classes, stable.tolist()) if ok]


def stop_stable(plan: DistillPlan, state: DistillState, unit: Unit) -> None:
    """After ``unit`` was added: where it ends a stage short of the cap, stop its stable
    classes at that sample count."""
    n = plan.unit_sample_range(unit).stop
    if plan.settings.until_stable is None or not plan.ends_stage(unit) \
            or n >= plan.settings.samples_per_class:
        return
    state.stop(classes_to_stop(plan, state, unit), n)
