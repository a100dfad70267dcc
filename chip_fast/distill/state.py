"""The running state of a distillation: streamed sums, fill statistics, progress per class group.

Owns the float64 sums (per class: sum of z*y over its samples, sum of y) that the unit runner's
partial results are added into, the per-channel fill statistics, how many sample blocks of
each class group are done, and where a distil-until-stable job stopped each class. Everything
that reads or writes this state from outside (checkpoints, the distributed runner) goes through
the methods here. It never runs a model or solves.
"""
from __future__ import annotations

import dataclasses

import torch

from ..atlas.collect import ChannelAtlas
from ..solve.control import CONTROL_SUMS
from .plan import DistillPlan, Unit

# layer -> (sum z*y (G, F, K), sum y (G, F), sum y^2 (G, F)) of a unit's G classes, F folds,
# then, at a layer with the view-slope control variate, its sums (CONTROL_SUMS, same rows)
Partial = dict[str, tuple[torch.Tensor, ...]]


class DistillState:
    """Sums of every distilled class at every layer, per fold of samples (sample i is in fold
    i % folds), and how far each class group got.

    A group's blocks are added in order, so its rows are the same whichever process ran the
    group and wherever a job was stopped.
    """

    def __init__(self, plan: DistillPlan) -> None:
        self.plan = plan
        n, f = len(plan.classes), plan.settings.folds
        self.sum_zy = {l: torch.zeros(n, f, plan.channels[l], dtype=torch.float64)
                       for l in plan.layers}
        self.sum_y = {l: torch.zeros(n, f, dtype=torch.float64) for l in plan.layers}
        self.sum_yy = {l: torch.zeros(n, f, dtype=torch.float64) for l in plan.layers}
        # The control variate's streamed sums (chip_fast.solve.control), at the layers with one.
        self.control = {l: {name: torch.zeros((n, f, plan.channels[l]) if name in ("zu", "q")
                                              else (n, f), dtype=torch.float64)
                            for name in CONTROL_SUMS}
                        for l in plan.layers if plan.controls[l] != "none"}
        self.done_blocks = [0] * len(plan.groups)
        # Per class, the samples it stopped at (distil until stable); 0 while it runs.
        self.stopped = torch.zeros(n, dtype=torch.int64)
        self.mu: dict[str, torch.Tensor] = {}      # per-channel fill mean of each layer
        self.sigma: dict[str, torch.Tensor] = {}   # and standard deviation
        # Each channel's strongest views (settings.atlas > 0): filled by the runner's prefix
        # observer, saved with the sums, merged from every checkpoint and every process.
        self.atlas = (ChannelAtlas.empty(plan.channels, plan.settings.atlas)
                      if plan.settings.atlas else None)

    # -- progress ---------------------------------------------------------------------------
    def add(self, unit: Unit, partial: Partial) -> None:
        """Add a finished unit; units of a group must come in block order."""
        if unit.block != self.done_blocks[unit.group]:
            raise RuntimeError(f"unit {unit} added out of order (group {unit.group} has "
                               f"{self.done_blocks[unit.group]} blocks done)")
        rows = self.plan.class_rows(self.plan.unit_classes(unit))
        for layer, (szy, sy, syy, *control) in partial.items():
            self.sum_zy[layer][rows] += szy
            self.sum_y[layer][rows] += sy
            self.sum_yy[layer][rows] += syy
            for name, part in zip(CONTROL_SUMS, control):
                self.control[layer][name][rows] += part
        self.done_blocks[unit.group] = unit.block + 1

    def active(self, g: int) -> tuple[int, ...] | None:
        """The classes of group ``g`` that have not stopped (None: all of them)."""
        classes = self.plan.groups[g]
        running = tuple(c for c in classes if not self.stopped[self.plan.slot[c]])
        return None if len(running) == len(classes) else running

    def pending(self, groups=None) -> list[Unit]:
        """Units still to run (of ``groups``), each with the classes of its group still running;
        a group whose every class stopped has none."""
        running = {g: self.active(g) for g in range(len(self.plan.groups))}
        return [dataclasses.replace(u, classes=running[u.group])
                for u in self.plan.pending(self.done_blocks, groups) if running[u.group] != ()]

    def unfinished_groups(self) -> list[int]:
        return [g for g, d in enumerate(self.done_blocks)
                if d != self.plan.blocks and self.active(g) != ()]

    def stop(self, classes: list[int], samples: int) -> None:
        """Record that ``classes`` stopped after ``samples`` samples each."""
        self.stopped[self.plan.class_rows(classes)] = samples

    def sample_counts(self) -> torch.Tensor:
        """(C,) int64: the samples each class's sums hold (the cap for a class that never
        stopped; the job must be finished)."""
        cap = self.plan.settings.samples_per_class
        return torch.where(self.stopped > 0, self.stopped, torch.full_like(self.stopped, cap))

    @property
    def has_fill_statistics(self) -> bool:
        return all(l in self.mu for l in self.plan.layers)

    def set_fill_statistics(self, mu: dict[str, torch.Tensor], sigma: dict[str, torch.Tensor]
                            ) -> None:
        self.mu, self.sigma = dict(mu), dict(sigma)

    # -- one group's rows, as a flat float64 vector (the distributed runner copies these) --------
    def group_size(self, g: int) -> int:
        """Length of :meth:`group_vector` for group ``g``."""
        n, f = len(self.plan.groups[g]), self.plan.settings.folds
        return (sum(n * f * (self.plan.channels[l] + 2) for l in self.plan.layers)
                + sum(n * f * (2 * self.plan.channels[l] + 3) for l in self.control) + n + 1)

    def _tables(self, layer: str) -> list[dict[str, torch.Tensor]]:
        """A layer's sum tables in the order group vectors hold them."""
        return [self.sum_zy, self.sum_y, self.sum_yy] + (
            [{layer: t} for t in self.control[layer].values()] if layer in self.control else [])

    def group_vector(self, g: int) -> torch.Tensor:
        """Group ``g``'s rows of every layer and its blocks done, flattened."""
        rows = self.plan.group_rows(g)
        parts = []
        for layer in self.plan.layers:
            parts += [table[layer][rows].flatten() for table in self._tables(layer)]
        parts.append(self.stopped[rows].to(torch.float64))
        parts.append(torch.tensor([float(self.done_blocks[g])], dtype=torch.float64))
        return torch.cat(parts)

    def set_group_vector(self, g: int, flat: torch.Tensor) -> None:
        """The inverse of :meth:`group_vector`: replace group ``g``'s rows and progress."""
        rows = self.plan.group_rows(g)
        at, n = 0, len(rows)
        for layer in self.plan.layers:
            for table in self._tables(layer):
                shape = table[layer][rows].shape
                table[layer][rows] = flat[at:at + shape.numel()].view(shape)
                at += shape.numel()
        self.stopped[rows] = flat[at:at + n].to(torch.int64)
        self.done_blocks[g] = int(flat[at + n])

    # -- checkpoint tensors -----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything to save, by name (sums and fill statistics, on the CPU)."""
        out = {f"sum_zy/{l}": self.sum_zy[l] for l in self.plan.layers}
        out.update({f"sum_y/{l}": self.sum_y[l] for l in self.plan.layers})
        out.update({f"sum_yy/{l}": self.sum_yy[l] for l in self.plan.layers})
        out.update({f"control_{name}/{l}": t for l, sums in self.control.items()
                    for name, t in sums.items()})
        out.update({f"mu/{l}": self.mu[l].cpu() for l in self.mu})
        out.update({f"sigma/{l}": self.sigma[l].cpu() for l in self.sigma})
        out["stopped"] = self.stopped
        if self.atlas is not None:
            out.update(self.atlas.to_tensors())
        return out

    def merge_atlas(self, other: ChannelAtlas) -> None:
        """Merge another process's or checkpoint's atlas of the same job into this one."""
        if self.atlas is not None:
            self.atlas.absorb(other)   # in place: the runner's observer holds this object

    def merge_saved_atlas(self, names: set[str], get) -> None:
        """Merge the atlas of a saved state (``get(name)`` returns its tensors), if it has one."""
        if self.atlas is not None and any(n.startswith("atlas/") for n in names):
            self.merge_atlas(ChannelAtlas.from_tensors({n: get(n) for n in names
                                                        if n.startswith("atlas/")}))

    def load_groups(self, groups: list[int], done: list[int], get, names: set[str]) -> None:
        """Take ``groups``' rows from a saved state (``get(name)`` returns its tensors, whose
        names are ``names``), with ``done[g]`` blocks done."""
        for layer in self.plan.layers if groups else []:
            saved = {name: (getattr(self, name)[layer], get(f"{name}/{layer}"))
                     for name in ("sum_zy", "sum_y", "sum_yy")}
            saved.update({f"control_{name}": (t, get(f"control_{name}/{layer}"))
                          for name, t in self.control.get(layer, {}).items()})
            for g in groups:
                rows = self.plan.group_rows(g)
                for mine, theirs in saved.values():
                    mine[rows] = theirs[rows]
        stopped = get("stopped") if groups and "stopped" in names else None
        for g in groups:
            self.done_blocks[g] = done[g]
            if stopped is not None:   # checkpoints from before distil-until-stable have none
                rows = self.plan.group_rows(g)
                self.stopped[rows] = stopped[rows]

    def saved_has_fill_statistics(self, names: set[str]) -> bool:
        return all(f"mu/{l}" in names for l in self.plan.layers)

    def load_fill_statistics(self, get, device: torch.device) -> None:
        for l in self.plan.layers:
            self.mu[l] = get(f"mu/{l}").to(device)
            self.sigma[l] = get(f"sigma/{l}").to(device)
