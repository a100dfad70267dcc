"""The plan of a distillation: every choice made once, before any perturbation.

Owns the classes, the cut of the work into units (class group x sample block), which view each
sample uses, each layer's tail path, and the identity that ties a checkpoint to its job. It runs
no model: the channel counts, the number of model outputs and the tail paths come resolved
(``chip_fast.distill.inputs``); the settings are ``chip_fast.distill.settings``'s.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from ..data.sources import ViewPlan, views_per_image
from .inputs import JobInputs
from .settings import DistillSettings


@dataclass(frozen=True)
class Unit:
    group: int
    block: int


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
        self.design = settings.masks   # made concrete by settings.resolve_masks
        self.fingerprint = inputs.fingerprint
        self.max_memory = max_memory           # the budget that chose the batch sizes, if any
        source = inputs.source
        self.class_ids = getattr(source, "class_ids", None)
        self.class_names = getattr(source, "class_names", None)
        big = [c for c in self.classes if c >= self.num_classes]
        if big:
            raise ValueError(f"classes {big[:10]} are outside the model's {self.num_classes} "
                             "outputs")
        n = settings.samples_per_class
        per_image = views_per_image(settings.augment)
        self.views = ViewPlan(n, {c: source.count(c) * per_image for c in self.classes},
                              design=self.design)
        cpu = settings.classes_per_unit
        self.groups = [self.classes[i:i + cpu] for i in range(0, len(self.classes), cpu)]
        self.blocks = math.ceil(n / settings.samples_per_unit)
        self.units = [Unit(g, b) for g in range(len(self.groups)) for b in range(self.blocks)]
        self.slot = {c: i for i, c in enumerate(self.classes)}

    def group_rows(self, g: int) -> torch.Tensor:
        """Rows of class group ``g`` in the per-class sums."""
        return torch.tensor([self.slot[c] for c in self.groups[g]])

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
        st = self.settings
        s0 = unit.block * st.samples_per_unit
        return range(s0, min(s0 + st.samples_per_unit, st.samples_per_class))

    def unit_samples(self, unit: Unit) -> int:
        """Perturbed networks evaluated by a unit (all layers)."""
        return len(self.groups[unit.group]) * len(self.unit_sample_range(unit)) * len(self.layers)

    def pending(self, done_blocks: Sequence[int], groups: Iterable[int] | None = None) -> list[Unit]:
        """Units not yet done, of ``groups`` (default all), in the order they must run."""
        groups = range(len(self.groups)) if groups is None else groups
        return [Unit(g, b) for g in groups for b in range(done_blocks[g], self.blocks)]

    def identity(self) -> str:
        """A hash of everything that must match for a checkpoint to be resumed."""
        key: dict[str, Any] = {
            "settings": dataclasses.asdict(self.settings), "layers": self.layers,
            "classes": self.classes, "model": self.fingerprint["sha256"], "paths": self.paths,
            "estimators": self.estimators,
            "views": {str(c): v for c, v in self.views.views.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
