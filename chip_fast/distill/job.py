"""Stage 1: distillation, and its one entry point ``distill_all_classes``.

A ``DistillJob`` puts the parts together: the plan (``plan``: settings, units, views, sizes),
the unit runner (``unit_runner``: the hot loop), the running state (``state``: sums and
progress), checkpoints (``checkpoint``) and the solve (``fit``). ``distill_all_classes`` runs a
job in one process or, started by torchrun, sharded over every process torchrun started
(``distributed``); the library and the command line both call it.

The work is cut into units: a group of classes x a block of consecutive samples. Partials are
added in unit order, so a run is bit-for-bit reproducible, and a job can stop after any unit
and resume.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..atlas.collect import denormalizer
from .checkpoint import CheckpointStore
from ..data.sources import as_source
from .distributed import (DEFAULT_TIMEOUT_S, DistributedError, Peers, Stopper, World,
                          broadcast_fill_statistics, check_same_job, gather_atlas, gather_groups,
                          init_process_group, launched_by_torchrun, owned_groups, pick_device,
                          world_from_env)
from ..solve.fit import fit_importance
from ..importance.core import Importance, model_fingerprint
from ..models.layers import default_layers
from .plan import DistillPlan, DistillSettings, Unit, plan_memory, resolve_settings, select_classes
from ..models.split import SplitModel
from .state import DistillState
from .runner import UnitRunner

logger = logging.getLogger("chip_fast")


class DistillJob:
    """One distillation on the device of the model: plan, runner and state, put together."""

    def __init__(self, model: nn.Module, data, layers: Sequence[str] | None,
                 settings: DistillSettings, classes: Iterable[int] | None = None) -> None:
        self.model = model
        self.source = as_source(data)
        self.device = next(model.parameters()).device
        settings = resolve_settings(settings, self.device)
        if layers is None:
            layers = default_layers(model)
            logger.warning("chip_fast: layers=None, distilling the default layers %s", layers)
        split = SplitModel(model, layers)
        classes = select_classes(self.source.classes, classes)
        self.runner = UnitRunner(model, split, self.source, settings, self.device)
        num_classes, channels, _, paths = self.runner.probe(classes[0])
        self.plan = DistillPlan(settings, split.layers, classes,
                                {c: self.source.count(c) for c in classes}, num_classes, channels,
                                paths)
        # A sparse support is recoverable from fewer samples than channels (compressed sensing),
        # but not from far fewer: then FISTA crawls and the support is arbitrary.
        thin = {l: k for l, k in channels.items() if 4 * settings.samples_per_class < k}
        if thin:
            warnings.warn(f"samples_per_class={settings.samples_per_class} is under a quarter of "
                          f"the channels of {thin}: the sparse fit is underdetermined there (slow "
                          "to converge, unstable support); use more samples", stacklevel=3)
        self.state = DistillState(self.plan)
        if self.state.atlas is not None:
            # On CUDA the observer reads each batch's channel maxima on the host: a sync per
            # prefix batch, the atlas's price (the tails stay sync-free).
            self.runner.observers.append(self.state.atlas.observer(
                split, denormalizer(getattr(self.source, "preprocess", None))))
        self.identity = self.plan.identity(model_fingerprint(model)["sha256"])
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
        (progress). The next unit's views decode while a unit runs. Adding a unit's sums and
        writing a checkpoint happen inside ``critical()``, so a signal handler that saves never
        sees a half-added unit."""
        started = last_save = time.monotonic()
        mu, sigma, runner, plan = self.state.mu, self.state.sigma, self.runner, self.plan
        gpu = self.device.type == "cuda"
        prepared = runner.prepare(plan, units[0]) if units else None
        launched = None
        for i, unit in enumerate(units):
            # The next unit decodes while this one runs; on CUDA it is also queued before this
            # unit's sums are read, so the device never waits for the host.
            following = runner.prepare(plan, units[i + 1]) if i + 1 < len(units) else None
            current = launched or runner.launch(plan, unit, mu, sigma, prepared, on_batch)
            launched = (runner.launch(plan, units[i + 1], mu, sigma, following, on_batch)
                        if gpu and following is not None else None)
            prepared = following
            partial = runner.collect(current, mu, sigma)
            with critical():
                self.state.add(unit, partial)
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

    def progress_bar(self, enabled: bool = True, label: str = ""):
        """A tqdm bar over all the job's samples, starting at those already done."""
        from tqdm.auto import tqdm
        total = sum(self.plan.unit_samples(u) for u in self.plan.units)
        done = total - sum(self.plan.unit_samples(u) for u in self.state.pending())
        return tqdm(total=total, initial=done, unit="sample", unit_scale=True, disable=not enabled,
                    dynamic_ncols=True, desc=f"CHIP {len(self.plan.classes)} classes @ "
                                             f"{', '.join(self.plan.layers)}{label}")

    def finish(self) -> Importance:
        """The importance of a job whose every unit is done; its settings record the path each
        layer took (affine or elementwise)."""
        imp = fit_importance(self.plan, self.state, model_fingerprint(self.model), self.source,
                             self.device)
        imp.settings["paths"] = dict(self.plan.paths)
        imp.atlas = self.state.atlas
        return imp

    def close(self) -> None:
        self.runner.close()


@contextlib.contextmanager
def _on_device_in_eval(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model on ``device`` in eval mode for the job, its training mode given back after."""
    was_training = model.training
    if was_training:
        warnings.warn("the model is in training mode; distilling it in eval mode", stacklevel=4)
    model.to(device).eval()
    try:
        yield
    finally:
        model.train(was_training)


def _run_own_units(job: DistillJob, units: list[Unit], peers: Peers, world: World,
                   store: CheckpointStore | None, checkpoint_every: float, progress: bool,
                   install_stopper: bool) -> None:
    """This rank's units through the job's unit loop, with a SIGTERM/SIGINT handler that saves,
    and a bar (rank 0's) that moves with every batch and counts every rank's samples."""
    posted = live = 0      # this rank's samples: posted to the others per unit, seen per batch
    bar = job.progress_bar(progress and world.is_main,
                           label=f" x{world.size}" if world.size > 1 else "")
    done_before, last = bar.n, 0.0

    def refresh(force: bool = True) -> None:
        nonlocal last
        if bar.disable or (not force and time.monotonic() - last < 0.2):
            return   # the others' progress is a store query: a few per second at most
        last = time.monotonic()
        bar.update(done_before + peers.total_progress() - posted + live - bar.n)

    def on_batch(samples: int) -> None:
        nonlocal live
        live += samples
        refresh(force=False)

    def on_unit(samples: int) -> None:
        nonlocal posted
        posted += samples
        peers.post_progress(posted)

    stopper = Stopper((lambda: store.save(job.state)) if store is not None else None)
    with (stopper.installed() if install_stopper else contextlib.nullcontext()), bar:
        job.run_pending(units, store=store, checkpoint_every=checkpoint_every,
                        on_unit=on_unit, on_batch=on_batch, critical=stopper.critical)
        peers.wait_for_all("done", on_poll=refresh)
        refresh()


def distill_all_classes(model: nn.Module, data=None, layers: Sequence[str] | None = None, *,
                        classes: Iterable[int] | None = None, samples_per_class: int = 2048,
                        seed: int = 0, p_keep: float = 0.5, fill: str = DistillSettings.fill,
                        response: str = "logit", alpha: float = 0.1, nonneg: bool = False,
                        augment: bool | int = False, batch_size: int | None = None,
                        atlas: int = 0, baseline: str = DistillSettings.baseline,
                        progress: bool = True, checkpoint: str | Path | None = None,
                        checkpoint_every: float = 300.0, out: str | Path | None = None,
                        keep_checkpoint: bool = True, max_memory: str | int | None = None,
                        device: str | torch.device | None = None,
                        timeout: float = DEFAULT_TIMEOUT_S, **advanced: Any) -> Importance | None:
    """Distil the channel importance of every class at ``layers`` (METHOD.md, Stage 1).

    ``data``: an ImageFolderSource, a folder in the ``train/<wnid>/`` layout, an
    ``(images, labels)`` pair of preprocessed tensors, or None: the folder named by the
    environment variable ``CHIP_FAST_TRAIN_DIR`` (folders are read with the model's
    preprocessing). ``layers=None`` picks the model's default layers
    (:func:`chip_fast.models.layers.default_layers`: the last ReLU-like output at the deepest resolution
    and at twice it). ``atlas=k`` keeps the channel atlas (each channel's ``k`` strongest
    distillation patches, :mod:`chip_fast.atlas.collect`) in the result and the file.
    ``baseline="view"`` (default) regresses each response minus ``p_keep`` times its view's
    unperturbed response (a control variate: the same estimate, far less noise with many
    photos per class; "none": the raw response). ``advanced`` takes the other fields of
    DistillSettings
    (classes_per_unit, samples_per_unit, fill_stats_views, tol, max_iter, tail_dtype). With
    ``checkpoint`` (a folder), the sums are saved there atomically every ``checkpoint_every``
    seconds and on SIGTERM/SIGINT, and a rerun of the same call resumes from it;
    ``keep_checkpoint=False`` removes its files once the result is complete. ``out``: write the
    importance file there. ``out`` and ``checkpoint`` are locked for the run (``<path>.lock``,
    :mod:`chip_fast.util.locks`): a second job writing either fails at once with LockedError naming
    the first. ``max_memory`` ('4GiB') chooses batch_size and samples_per_unit
    (:func:`chip_fast.distill.plan.plan_memory`). ``device``: by default the model's; the model is moved
    to ``device`` and run in eval mode.

    Started by torchrun (``RANK``/``WORLD_SIZE`` set), the job is sharded over all processes
    (class groups ``g % world_size``), each on ``cuda:LOCAL_RANK`` by default; ``timeout`` (s)
    is how long a silent rank may take before the job fails; rank 0 holds the locks. The result
    is the same file as one process's. Returns the Importance on rank 0, None on the others.
    """
    world = world_from_env()
    distributed = world.size > 1 or launched_by_torchrun()
    with output_locks(world, out, checkpoint):
        dev = pick_device(world, device, model, distributed)
        settings = DistillSettings(samples_per_class=samples_per_class, seed=seed, p_keep=p_keep,
                                   fill=fill, response=response, alpha=alpha, nonneg=nonneg,
                                   augment=augment, batch_size=batch_size, atlas=atlas,
                                   baseline=baseline, **advanced)
        started = time.monotonic()
        with _on_device_in_eval(model, dev):
            source = as_source(data, preprocess=_folder_preprocess(model))
            if max_memory is not None:
                settings = _budgeted(settings, model, source, layers, max_memory,
                                     given={"batch_size": batch_size, **advanced})
            job = DistillJob(model, source, layers, settings, classes)
            store = (CheckpointStore(checkpoint, job.identity, world.rank, world.size)
                     if checkpoint is not None else None)
            if distributed:
                init_process_group(world, dev, timeout)
            peers = Peers(world, timeout, beat_every=min(5.0, timeout / 4))
            try:
                result = _run(job, world, peers, store, checkpoint_every, progress, distributed)
                if result is not None:
                    _save(result, job, world, peers, out, progress, max_memory, started)
                # The others wait for the file without a time limit (rank 0's solve may be
                # long), then a barrier, immediate by then, keeps the store's host alive until
                # everyone has looked.
                peers.wait_for_all("saved")
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()
                if result is not None and store is not None and not keep_checkpoint:
                    _remove_checkpoint(store.folder)   # every rank's last save is behind us
                return result
            except BaseException as e:  # SystemExit from SIGTERM too: the others stop at once
                peers.post_failure(f"{type(e).__name__}: {e}")
                raise
            finally:
                job.close()
                peers.stop()
                if torch.distributed.is_initialized():
                    torch.distributed.destroy_process_group()


def _budgeted(settings: DistillSettings, model: nn.Module, source, layers: Sequence[str] | None,
              max_memory: str | int, given: dict[str, Any]) -> DistillSettings:
    """``settings`` with the batch size and samples per unit that fit ``max_memory``."""
    for k in ("batch_size", "samples_per_unit"):
        if given.get(k) is not None:
            raise ValueError(f"give {k} or max_memory, not both: the budget chooses {k}")
    image = source.load(source.classes[0], 0)
    mem = plan_memory(model, tuple(image.shape),
                      layers if layers is not None else default_layers(model), max_memory,
                      classes_per_unit=settings.classes_per_unit,
                      samples_per_class=settings.samples_per_class)
    return dataclasses.replace(settings, batch_size=mem.batch_size,
                               samples_per_unit=mem.samples_per_unit)


def _run(job: DistillJob, world: World, peers: Peers, store: CheckpointStore | None,
         checkpoint_every: float, progress: bool, distributed: bool) -> Importance | None:
    """Resume, fill statistics, this rank's units, the rows of the others; rank 0 solves."""
    peers.start_heartbeat()
    check_same_job(job.identity, world)
    have_stats = store.restore(job.state, job.device) if store is not None else False
    job.measure_fill_statistics(needed=world.is_main and not have_stats)
    if job.settings.fill != "zero":
        broadcast_fill_statistics(job.state, world, job.device)
    units = job.state.pending(owned_groups(len(job.plan.groups), world))
    _run_own_units(job, units, peers, world, store, checkpoint_every, progress,
                   install_stopper=distributed or store is not None)
    gather_groups(job.state, world, job.device)
    gather_atlas(job.state, world, job.device)
    if not world.is_main:
        return None
    missing = job.state.unfinished_groups()
    if missing:
        raise DistributedError(f"class groups {missing[:10]} are unfinished after the run")
    return job.finish()


def _save(result: Importance, job: DistillJob, world: World, peers: Peers,
          out: str | Path | None, progress: bool, max_memory, started: float) -> None:
    """Rank 0's end of a job: the budget into the settings, the file, the summary line."""
    if max_memory is not None:
        result.settings["max_memory"] = str(max_memory)
    if out is not None:
        result.save(out)
    if progress:
        _summary(job, world, peers, time.monotonic() - started, out)


def _summary(job: DistillJob, world: World, peers: Peers, wall: float,
             out: str | Path | None) -> None:
    n, work = peers.total_progress(), job.work_seconds
    where = f"; wrote {out}" if out is not None else ""
    print(f"chip_fast: {len(job.plan.classes)} classes x {len(job.plan.layers)} layer(s), {n} "
          f"perturbed samples this run in {wall:.1f} s wall ({n / max(wall, 1e-9):.0f} "
          f"samples/s; {n / max(work, 1e-9):.0f} samples/s in this process's {work:.1f} s of "
          f"units) "
          f"on {world.size} process(es){where}", file=sys.stderr, flush=True)


# -- outputs of distill_all_classes: locks, the default source, removing checkpoints ------------
def output_locks(world: World, out: str | Path | None,
                 checkpoint: str | Path | None) -> ContextManager[Any]:
    """The locks of the output file and the checkpoint folder, held by rank 0 only: the other
    ranks write where rank 0 says, and torchrun stops them all when rank 0 fails to lock.
    (The command line takes them too, before it reads the data; locks nest.)"""
    from ..util.locks import locked
    if not world.is_main:
        return contextlib.nullcontext()
    return locked((out, "output file (--out)"), (checkpoint, "checkpoint folder (--checkpoint)"))


def _folder_preprocess(model: nn.Module):
    """The preprocessing of ``model``'s family, for image folders opened on its behalf."""
    from ..models.efficientnet_lite import EfficientNetLite0
    from ..data.preprocess import preprocess_for
    return preprocess_for("efficientnet_lite0" if isinstance(model, EfficientNetLite0) else "")


def _remove_checkpoint(folder: Path) -> None:
    """Delete a finished job's checkpoint files, and the folder if nothing else is in it (a
    folder the user named may hold other files: those stay)."""
    from .checkpoint import CHECKPOINT_GLOB
    # with the temporary files of a save that a crash interrupted (see importance._atomic_write)
    for path in [*folder.glob(CHECKPOINT_GLOB), *folder.glob(f".{CHECKPOINT_GLOB}.*.tmp")]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    logger.info("chip_fast: removed the checkpoint %s (the result is complete)", folder)
