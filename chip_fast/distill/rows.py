"""A unit's rows (one row = one perturbed network of one class) and every index the hot loop
needs about them, built on the host once per unit and moved to the device in one copy.

Rows are ordered sample-major (each batch holds every class of the group). For each row: the
view it perturbs (an index into the unit's views), its class, its (class slot, fold) sum row and
its sample index. On the kernel path each batch size also gets the response sums' index plan
(``chip_fast.ops.response_sums.sums_plan``: the per-batch sort and bucket bounds that a batch
used to compute on the device), so a batch launches no index work at all.

Owns the rows and their device copy; which views and folds samples get is the plan's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import rng
from ..ops.response_sums import sums_plan
from .linear_head import ViewRuns, view_runs
from .plan import DistillPlan, Unit
from .settings import DistillSettings


@dataclass
class Rows:
    """A unit's rows on the device (see the module doc)."""
    view: torch.Tensor
    cls: torch.Tensor
    sum_row: torch.Tensor
    sample: torch.Tensor
    keys: list[tuple[int, int]]        # (class, view) of each distinct view, in load order
    key_cls: torch.Tensor              # the class of each of ``keys``, on the device
    # batch size -> the response sums' plan (kernel path only)
    plans: dict[int, tuple[tuple[torch.Tensor, ...], int]] = field(default_factory=dict)
    _batches: dict[int, list] = field(default_factory=dict)
    host_view: torch.Tensor | None = None   # ``view`` on the host, for ``view_runs``
    samples: range = range(0)               # the unit's per-class sample indices
    _runs: dict[int, list[ViewRuns]] = field(default_factory=dict)

    def view_runs(self, batch: int) -> list[ViewRuns]:
        """Each batch's rows grouped by view (``linear_head.view_runs``), for the head path;
        once per unit and batch size."""
        if batch not in self._runs:
            self._runs[batch] = [view_runs(v, self.view.device)
                                 for v in self.host_view.split(batch)]
        return self._runs[batch]

    def unit_masks(self, st: DistillSettings, channels: int) -> torch.Tensor:
        """The masks of the unit's samples (one row per per-class sample index, from
        ``samples.start``), drawn once for all its classes on the device without a sync
        (``rng.keep_masks_range``); row ``sample - samples.start`` is a row's mask."""
        return rng.keep_masks_range(st.seed, self.samples.start, self.samples.stop, channels,
                                    st.p_keep, st.masks, self.view.device, st.folds)

    def batch_masks(self, st: DistillSettings, channels: int, batch: int | None = None
                    ) -> list[torch.Tensor]:
        """Each batch's masks (rows x channels, batches of ``batch`` rows, default
        ``st.batch_size``), from ``unit_masks``; for the head path."""
        unit = self.unit_masks(st, channels)
        return [unit.index_select(0, s - self.samples.start)
                for s in self.sample.split(batch or st.batch_size)]

    def __len__(self) -> int:
        return len(self.view)

    def batches(self, batch: int) -> list[tuple[torch.Tensor, ...]]:
        """(view, class, sample, sum row) of each batch of ``batch`` rows: cut once per unit
        and batch size, not per batch."""
        if batch not in self._batches:
            self._batches[batch] = list(zip(*(t.split(batch) for t in (
                self.view, self.cls, self.sample, self.sum_row))))
        return self._batches[batch]


def _host_rows(plan: DistillPlan, unit: Unit):
    classes = plan.unit_classes(unit)
    samples = torch.tensor(list(plan.unit_sample_range(unit)), dtype=torch.int64)
    keys: list[tuple[int, int]] = []
    index: dict[tuple[int, int], int] = {}
    view_cols = []
    for c in classes:
        cols = []
        for v in plan.views.view_of(c, samples).tolist():
            if (c, v) not in index:
                index[(c, v)] = len(keys)
                keys.append((c, v))
            cols.append(index[(c, v)])
        view_cols.append(torch.tensor(cols))
    g, n = len(classes), len(samples)
    view = torch.stack(view_cols, 1).flatten()                       # (n * g,)
    cls = torch.tensor(classes).repeat(n)
    slot = torch.arange(g).repeat(n)
    sample = samples.repeat_interleave(g)
    sum_row = slot * plan.settings.folds + rng.fold_of(sample, plan.settings.folds,
                                                       plan.design)
    return view, cls, sum_row, sample, keys, torch.tensor([c for c, _ in keys])


def _to_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The int64 host tensors on the device through one pinned buffer and one asynchronous
    copy (not one copy each)."""
    if device.type != "cuda":
        return [t.to(device) for t in tensors]
    flat = torch.cat([t.flatten() for t in tensors]).pin_memory().to(device, non_blocking=True)
    return [part.view(t.shape) for part, t in zip(flat.split([t.numel() for t in tensors]),
                                                  tensors)]


def make_rows(plan: DistillPlan, unit: Unit, device: torch.device,
              kernel_batches: list[int]) -> Rows:
    """The unit's rows, with the response sums' plan for each batch size of
    ``kernel_batches`` (the batch sizes of the layers that run on the kernel path)."""
    view, cls, sum_row, sample, keys, key_cls = _host_rows(plan, unit)
    n_rows = len(plan.unit_classes(unit)) * plan.settings.folds
    plans, host = {}, [view, cls, sum_row, sample, key_cls]
    for batch in kernel_batches:
        parts, splits = sums_plan(sum_row, sample, cls, view, n_rows, batch)
        plans[batch] = (len(host), len(parts), splits)
        host += list(parts)
    on = _to_device(host, device)
    rows = Rows(*on[:4], keys, on[4], host_view=view, samples=plan.unit_sample_range(unit))
    for batch, (at, n, splits) in plans.items():
        rows.plans[batch] = (tuple(on[at:at + n]), splits)
    return rows
