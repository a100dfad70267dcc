"""The plan of a distillation: every choice made once, before any perturbation.

Owns the classes, the cut of the work into units (class group x sample block), the stages of a
distil-until-stable job, which view each sample uses, each layer's tail path, and the identity
that ties a checkpoint to its job. It runs
no model: the channel counts, the number of model outputs and the tail paths come resolved
(``chip_fast.distill.inputs``); the settings are ``chip_fast.distill.settings``'s.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..data.sources import ViewPlan, check_folder_order, views_per_image
from .inputs import JobInputs
from .settings import DistillSettings


# The first stage of a distil-until-stable job: with fewer samples the half-fold fits that
# predict a class's stability are too noisy to stop on.
FIRST_STAGE = 2048


@dataclass(frozen=True)
class Unit:
    group: int
    block: int
    # The classes of the group it runs (those not yet stopped); None: the whole group.
    classes: tuple[int, ...] | None = None


def stage_ends(n: int, until_stable: float | None, folds: int) -> tuple[int, ...]:
    """Where the stages of samples end: n alone, or for a distil-until-stable job n, n / 2,
    n / 4, ... down to FIRST_STAGE, each a whole number of pairs per fold."""
    ends = [n]
    while (until_stable is not None and ends[-1] // 2 >= FIRST_STAGE
           and (ends[-1] // 2) % (2 * folds) == 0):
        ends.append(ends[-1] // 2)
    return tuple(reversed(ends))


class DistillPlan:
    """Classes, units, views and sizes of one job: fixed before the first unit runs."""

    def __init__(self, settings: DistillSettings, inputs: JobInputs,
                 max_memory: str | int | None = None) -> None:
        self.settings = settings
        self.layers = inputs.layers
        self.classes = list(inputs.classes)
        self.num_classes = inputs.num_classes
        self.channels = dict(inputs.channels)
        # "affine" or "elementwise" per layer (chip_fast.distill.tails): part of what a file means.
        self.paths = inputs.paths
        self.estimators = inputs.estimators(settings)
        self.controls = inputs.controls(settings)
        self.design = settings.masks   # made concrete by settings.resolve_masks
        self.fingerprint = inputs.fingerprint
        self.max_memory = max_memory           # the budget that chose the batch sizes, if any
        source = inputs.source
        self.class_ids = getattr(source, "class_ids", None)
        self.class_names = getattr(source, "class_names", None)
        check_folder_order(getattr(source, "sorted_order", None), self.num_classes)
        big = [c for c in self.classes if c >= self.num_classes]
        if big:
            raise ValueError(f"classes {big[:10]} are outside the model's {self.num_classes} "
                             "outputs")
        n = settings.samples_per_class
        per_image = views_per_image(settings.augment)
        self.stages = stage_ends(n, settings.until_stable, settings.folds)
        self.views = ViewPlan(n, {c: source.count(c) * per_image for c in self.classes},
                              design=self.design,
                              stages=self.stages if len(self.stages) > 1 else ())
        cpu = settings.classes_per_unit
        self.groups = [self.classes[i:i + cpu] for i in range(0, len(self.classes), cpu)]
        # Blocks never straddle a stage's end, so a class can stop after any stage.
        step = settings.samples_per_unit
        self.block_ranges = [range(s, min(s + step, end)) for start, end in
                             zip((0,) + self.stages[:-1], self.stages)
                             for s in range(start, end, step)]
        self.blocks = len(self.block_ranges)
        self.units = [Unit(g, b) for g in range(len(self.groups)) for b in range(self.blocks)]
        self.slot = {c: i for i, c in enumerate(self.classes)}

    def group_rows(self, g: int) -> torch.Tensor:
        """Rows of class group ``g`` in the per-class sums."""
        return self.class_rows(self.groups[g])

    def class_rows(self, classes: Iterable[int]) -> torch.Tensor:
        """Rows of ``classes`` in the per-class sums."""
        return torch.tensor([self.slot[c] for c in classes], dtype=torch.int64)

    def fill_views(self) -> list[tuple[int, int]]:
        """The (class, view) pairs that estimate the fill statistics: up to
        ``fill_stats_views``, round-robin over the classes so every class counts."""
        order: list[tuple[int, int]] = []
        depth = 0
        while len(order) < self.settings.fill_stats_views:
            added = [(c, depth) for c in self.classes if depth < self.views.views[c]]
            if not added:
                break
            order += added
            depth += 1
        return order[:self.settings.fill_stats_views]

    def unit_sample_range(self, unit: Unit) -> range:
        """Per-class sample indices of a unit."""
        return self.block_ranges[unit.block]

    def unit_classes(self, unit: Unit) -> list[int]:
        """The classes a unit runs: those it names, else its whole group."""
        return list(unit.classes) if unit.classes is not None else self.groups[unit.group]

    def ends_stage(self, unit: Unit) -> bool:
        """Whether a unit's last sample ends a stage (where a class may stop)."""
        return self.block_ranges[unit.block].stop in self.stages

    def unit_samples(self, unit: Unit) -> int:
        """Perturbed networks evaluated by a unit (all layers)."""
        return len(self.unit_classes(unit)) * len(self.unit_sample_range(unit)) * len(self.layers)

    def pending(self, done_blocks: Sequence[int], groups: Iterable[int] | None = None) -> list[Unit]:
        """Units not yet done, of ``groups`` (default all), in the order they must run."""
        groups = range(len(self.groups)) if groups is None else groups
        return [Unit(g, b) for g in groups for b in range(done_blocks[g], self.blocks)]

    def identity(self) -> str:
        """A hash of everything that must match for a checkpoint to be resumed."""
        settings = dataclasses.asdict(self.settings)
        if settings["until_stable"] is None:   # as before it existed: older checkpoints resume
            del settings["until_stable"]
        if all(c == "none" for c in self.controls.values()):   # the same
            del settings["control"]
        if settings["prefix_dtype"] == "float32":   # the same
            del settings["prefix_dtype"]
        key: dict[str, Any] = {
            "settings": settings, "layers": self.layers,
            "classes": self.classes, "model": self.fingerprint["sha256"], "paths": self.paths,
            "estimators": self.estimators,
            **({"controls": self.controls} if "control" in settings else {}),
            "views": {str(c): v for c, v in self.views.views.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
