"""One distillation in one process: ``DistillJob`` puts the parts together.

The inputs resolved once (``inputs``), the plan (``plan``: units, views, sizes), the unit runner
(``runner``: the hot loop), the running state (``state``: sums and progress), checkpoints
(``checkpoint``) and the result (``result``). How a job runs over torchrun ranks, with locks and
checkpoints, is ``run``'s.

The work is cut into units: a group of classes x a block of consecutive samples. Partials are
added in unit order, so a run is bit-for-bit reproducible, and a job can stop after any unit
and resume.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Any, Callable, ContextManager, Iterable, Sequence

from torch import nn

from ..atlas.collect import denormalizer
from ..data.sources import DataLike
from ..importance.core import Importance
from .checkpoint import CheckpointStore
from .inputs import resolve_inputs
from .memory import plan_memory
from .plan import FIRST_STAGE, DistillPlan, Unit
from .result import fit_importance
from .runner import UnitRunner
from .settings import DistillSettings, resolve_masks, resolve_settings
from .state import DistillState
from .stopping import stop_stable


class DistillJob:
    """One distillation on the device of the model: plan, runner and state, put together."""

    def __init__(self, model: nn.Module, data: DataLike, layers: Sequence[str] | None,
                 settings: DistillSettings, classes: Iterable[int] | None = None, *,
                 max_memory: str | int | None = None) -> None:
        """Resolve the model, data, layers and classes once (``inputs.resolve_inputs``) on the
        model's device, then plan; ``max_memory`` chooses the batch size and samples per unit
        (give it or those, not both)."""
        self.model = model
        self.device = next(model.parameters()).device
        settings = resolve_settings(settings, self.device)
        inputs = resolve_inputs(model, data, layers, classes, settings, self.device)
        settings = resolve_masks(settings, inputs.nonlinear_sampled(settings))
        if max_memory is not None:
            mem = plan_memory(model, inputs.image_shape, inputs.layers, max_memory,
                              classes_per_unit=settings.classes_per_unit,
                              samples_per_class=settings.samples_per_class)
            settings = dataclasses.replace(settings, batch_size=mem.batch_size,
                                           samples_per_unit=mem.samples_per_unit)
        self.source = inputs.source
        self.runner = UnitRunner(inputs, settings, self.device)
        self.plan = DistillPlan(settings, inputs, max_memory)
        # A sparse support is recoverable from fewer samples than channels (compressed sensing),
        # but not from far fewer: then FISTA crawls and the support is arbitrary.
        thin = {l: k for l, k in inputs.channels.items()
                if 4 * settings.samples_per_class < k and self.plan.estimators[l] == "sampled"}
        if thin:
            warnings.warn(f"samples_per_class={settings.samples_per_class} is under a quarter of "
                          f"the channels of {thin}: the sparse fit is underdetermined there (slow "
                          "to converge, unstable support); use more samples", stacklevel=4)
        if settings.until_stable is not None and len(self.plan.stages) == 1:
            warnings.warn(f"until_stable: samples_per_class={settings.samples_per_class} is one "
                          "stage, so no class can stop before it; the cap must be at least "
                          f"{2 * FIRST_STAGE} (and halve to whole pairs per fold) for a class "
                          "to stop early", stacklevel=4)
        self.state = DistillState(self.plan)
        if self.state.atlas is not None:
            # On CUDA the observer reads each batch's channel maxima on the host: a sync per
            # prefix batch, the atlas's price (the tails stay sync-free).
            self.runner.observers.append(self.state.atlas.observer(
                inputs.split, denormalizer(getattr(self.source, "preprocess", None))))
        self.identity = self.plan.identity()
        self.work_seconds = 0.0   # spent in run_pending: units and checkpoints

    @property
    def settings(self) -> DistillSettings:
        return self.plan.settings

    def measure_fill_statistics(self, needed: bool = True) -> None:
        """The fill statistics pass (per-channel mean and std of every layer; none for
        ``fill="zero"``). It runs when this process needs the statistics (``needed``) and also
        when it keeps its views for the units (``UnitRunner.caches_views``): then every process
        runs it, also after a resume, so each view's prefix comes from the same batch in every
        process and every run, and the files stay identical."""
        if self.settings.fill == "zero":
            return
        if needed or self.runner.caches_views(self.plan):
            mu, sigma = self.runner.fill_statistics(self.plan)
            if needed:
                self.state.set_fill_statistics(mu, sigma)

    def run_pending(self, units: list[Unit], *, store: CheckpointStore | None = None,
                    checkpoint_every: float = 300.0,
                    on_unit: Callable[[int], None] | None = None,
                    on_batch: Callable[[int], None] | None = None,
                    critical: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        """Run ``units`` in order; checkpoint atomically every ``checkpoint_every`` seconds and
        at the end. ``on_batch(samples)`` follows each batch, ``on_unit(samples)`` each unit
        (progress). Later units' views decode while a unit runs. Adding a unit's sums and
        writing a checkpoint happen inside ``critical()``, so a signal handler that saves never
        sees a half-added unit."""
        started = last_save = time.monotonic()
        mu, sigma, runner, plan = self.state.mu, self.state.sigma, self.runner, self.plan
        # On CUDA unit i+1 is queued before unit i's sums are read (the device never waits for
        # the host) and unit i+2 decodes meanwhile; on a CPU a unit runs while the next decodes.
        lead = 1 if self.device.type == "cuda" else 0
        ahead: dict[int, tuple[Unit, Any]] = {}      # prepared: (the unit as run, its views)
        launched: dict[int, tuple[Unit, Any]] = {}
        for i in range(len(units)):
            unit = self._as_run(units[i])
            if unit is None:   # its group's every class stopped
                continue
            for table in (ahead, launched):   # made before a stop changed its classes
                if i in table and table[i][0] != unit:
                    del table[i]
            for j in range(i, min(len(units), i + lead + 2)):
                if j not in ahead and j not in launched and self._settled(units, i, j):
                    u = self._as_run(units[j])
                    if u is not None:
                        ahead[j] = (u, runner.prepare(plan, u))
            for j in range(i, min(len(units), i + lead + 1)):
                if j not in launched and j in ahead:
                    u, prepared = ahead.pop(j)
                    launched[j] = (u, runner.launch(plan, u, mu, sigma, prepared, on_batch))
            partial = runner.collect(launched.pop(i)[1], mu, sigma)
            with critical():   # the stop decision belongs to the unit: a checkpoint has both
                self.state.add(unit, partial)
                stop_stable(plan, self.state, unit)
            if on_unit is not None:
                on_unit(self.plan.unit_samples(unit))
            if store is not None and time.monotonic() - last_save >= checkpoint_every:
                with critical():
                    store.save(self.state)
                last_save = time.monotonic()
        if store is not None:
            with critical():
                store.save(self.state)
        self.work_seconds += time.monotonic() - started

    def _as_run(self, unit: Unit) -> Unit | None:
        """``unit`` with the classes of its group still running (None: none is)."""
        classes = self.state.active(unit.group)
        return None if classes == () else dataclasses.replace(unit, classes=classes)

    def _settled(self, units: list[Unit], i: int, j: int) -> bool:
        """Whether unit j's classes are known before units i..j-1 are added: no stop decision
        of its group comes between."""
        return self.settings.until_stable is None or not any(
            units[t].group == units[j].group and self.plan.ends_stage(units[t])
            for t in range(i, j))

    def progress_bar(self, enabled: bool = True, label: str = ""):
        """A tqdm bar over all the job's samples, starting at those already done."""
        from tqdm.auto import tqdm
        total = sum(self.plan.unit_samples(u) for u in self.plan.units)
        done = total - sum(self.plan.unit_samples(u) for u in self.state.pending())
        return tqdm(total=total, initial=done, unit="sample", unit_scale=True, disable=not enabled,
                    dynamic_ncols=True, desc=f"CHIP {len(self.plan.classes)} classes @ "
                                             f"{', '.join(self.plan.layers)}{label}")

    def finish(self) -> Importance:
        """The importance of a job whose every unit is done."""
        return fit_importance(self.plan, self.state, self.device)

    def close(self) -> None:
        self.runner.close()
