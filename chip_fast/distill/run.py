"""How a distillation runs: ``distill_all_classes``, the one entry point of the library and the
command line, and ``run_job`` behind it.

A run takes the output locks, picks the device (``cuda:LOCAL_RANK`` under torchrun), builds the
``DistillJob`` (which resolves model, data, layers and classes once), resumes from its
checkpoints, runs this process's class groups (``distributed``: rank r owns groups g % world
== r), gathers the others' rows, and on rank 0 solves and writes the file. A signal saves a
checkpoint first.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..data.sources import DataLike
from ..importance.core import Importance
from ..util.locks import locked
from .checkpoint import CHECKPOINT_GLOB, CheckpointStore
from .distributed import (DistributedError, Peers, Stopper, World, broadcast_fill_statistics,
                          check_same_job, gather_atlas, gather_groups, init_process_group,
                          launched_by_torchrun, owned_groups, pick_device, world_from_env)
from .job import DistillJob
from .plan import Unit
from .settings import DistillSettings, JobOptions

logger = logging.getLogger("chip_fast")


@contextlib.contextmanager
def _on_device_in_eval(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model on ``device`` in eval mode for the job, its training mode given back after."""
    was_training = model.training
    if was_training:
        warnings.warn("the model is in training mode; distilling it in eval mode", stacklevel=5)
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
        if job.settings.until_stable is not None and not bar.disable:
            bar.total = bar.n   # classes that stopped early ran fewer samples than planned
            bar.refresh()


def distill_all_classes(
        model: nn.Module, data: DataLike = None, layers: Sequence[str] | None = None, *,
        classes: Iterable[int | str] | None = None,
        samples_per_class: int = DistillSettings.samples_per_class, seed: int = 0,
        p_keep: float = 0.5, fill: str = DistillSettings.fill, response: str = "logit",
        alpha: float = 0.1, nonneg: bool = False, augment: bool | int = False,
        batch_size: int | None = None, atlas: int = 0,
        baseline: str = DistillSettings.baseline, progress: bool = True,
        checkpoint: str | Path | None = None, checkpoint_every: float = 300.0,
        out: str | Path | None = None, keep_checkpoint: bool = True,
        max_memory: str | int | None = None, device: str | torch.device | None = None,
        timeout: float = JobOptions.timeout, classes_per_unit: int = 8,
        samples_per_unit: int | None = None, fill_stats_views: int = 1024,
        tol: float = DistillSettings.tol, max_iter: int = DistillSettings.max_iter,
        folds: int = 4, tail_dtype: str = "auto", prefix_dtype: str = "auto",
        tail_path: str = "auto",
        masks: str = DistillSettings.masks, estimator: str = DistillSettings.estimator,
        until_stable: float | None = None,
        control: str = DistillSettings.control) -> Importance | None:
    """Distil the channel importance of every class at ``layers`` (METHOD.md, Stage 1).

    ``data``: an ImageFolderSource, a folder in the ``train/<wnid>/`` layout, an
    ``(images, labels)`` pair of preprocessed tensors, or None: the folder named by the
    environment variable ``CHIP_FAST_TRAIN_DIR`` (folders are read with the model's own
    preprocessing, ``chip_fast.models.preprocess_of``). ``layers=None`` picks the model's
    default layers (``chip_fast.models.layers.default_layers``). ``classes``: indices, or the
    data's wnids or class names (``["n01440764", "tench"]``); by default every class with
    images. The keywords from
    ``samples_per_class`` to ``baseline`` and from ``classes_per_unit`` on are the fields of
    ``DistillSettings`` (what changes the result; all recorded in the file, documented there);
    the others are ``JobOptions`` (how the run goes).

    ``until_stable=0.95``: distil until stable. ``samples_per_class`` becomes a cap, and each
    class stops where a stage of samples ends (they double up to the cap) once the agreement
    its own sums predict with another seed's weights reaches 0.95 at every sampled layer; the
    file records each class's count (``settings["samples_reached"]``) beside its
    ``agreement`` and ``weight_se``.

    ``checkpoint`` (a folder): the sums are saved there atomically every ``checkpoint_every``
    seconds and on SIGTERM/SIGINT, and a rerun of the same call resumes from it;
    ``keep_checkpoint=False`` removes its files once the result is complete. ``out``: write the
    importance file there. ``out`` and ``checkpoint`` are locked for the run (``<path>.lock``):
    a second job writing either fails at once with LockedError naming the first.
    ``max_memory`` ('4GiB') chooses batch_size and samples_per_unit. ``device``: by default the
    model's; the model is moved to ``device`` and run in eval mode.

    Started by torchrun (``RANK``/``WORLD_SIZE`` set), the job is sharded over all processes,
    each on ``cuda:LOCAL_RANK`` by default; ``timeout`` (s) is how long a silent rank may take
    before the job fails; rank 0 holds the locks. The result is the same file as one
    process's. Returns the Importance on rank 0, None on the others.
    """
    if max_memory is not None and (batch_size is not None or samples_per_unit is not None):
        raise ValueError("give batch_size / samples_per_unit or max_memory, not both: the budget "
                         "chooses them")
    settings = DistillSettings(
        samples_per_class=samples_per_class, seed=seed, p_keep=p_keep, fill=fill,
        response=response, alpha=alpha, nonneg=nonneg, augment=augment, batch_size=batch_size,
        classes_per_unit=classes_per_unit,
        samples_per_unit=samples_per_unit or DistillSettings.samples_per_unit,
        fill_stats_views=fill_stats_views, tol=tol, max_iter=max_iter, folds=folds,
        tail_dtype=tail_dtype, prefix_dtype=prefix_dtype, tail_path=tail_path, atlas=atlas,
        baseline=baseline, masks=masks, estimator=estimator, control=control,
        until_stable=None if until_stable is None else float(until_stable))
    options = JobOptions(out=out, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         keep_checkpoint=keep_checkpoint, progress=progress,
                         max_memory=max_memory, device=device, timeout=timeout)
    return run_job(model, data, layers, classes, settings, options)


def run_job(model: nn.Module, data: DataLike, layers: Sequence[str] | None,
            classes: Iterable[int | str] | None, settings: DistillSettings,
            options: JobOptions) -> Importance | None:
    """``distill_all_classes`` with its settings and options as the typed objects."""
    o = options
    world = world_from_env()
    distributed = world.size > 1 or launched_by_torchrun()
    with output_locks(world, o.out, o.checkpoint):
        dev = pick_device(world, o.device, model, distributed)
        started = time.monotonic()
        with _on_device_in_eval(model, dev):
            job = DistillJob(model, data, layers, settings, classes, max_memory=o.max_memory)
            store = (CheckpointStore(o.checkpoint, job.identity, world.rank, world.size)
                     if o.checkpoint is not None else None)
            if distributed:
                init_process_group(world, dev, o.timeout)
            peers = Peers(world, o.timeout, beat_every=min(5.0, o.timeout / 4))
            try:
                result = _run(job, world, peers, store, o.checkpoint_every, o.progress,
                              distributed)
                if result is not None:
                    _save(result, job, world, peers, o.out, o.progress, started)
                # The others wait for the file without a time limit (rank 0's solve may be
                # long), then a barrier, immediate by then, keeps the store's host alive until
                # everyone has looked.
                peers.wait_for_all("saved")
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()
                if result is not None and store is not None and not o.keep_checkpoint:
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
          out: str | Path | None, progress: bool, started: float) -> None:
    """Rank 0's end of a job: the file and the summary line."""
    if out is not None:
        result.save(out)
    if progress:
        _summary(job, world, peers, time.monotonic() - started, out)
        print(stability_summary(result), file=sys.stderr, flush=True)


def _summary(job: DistillJob, world: World, peers: Peers, wall: float,
             out: str | Path | None) -> None:
    n, work = peers.total_progress(), job.work_seconds
    where = f"; wrote {out}" if out is not None else ""
    print(f"chip_fast: {len(job.plan.classes)} classes x {len(job.plan.layers)} layer(s), {n} "
          f"perturbed samples this run in {wall:.1f} s wall ({n / max(wall, 1e-9):.0f} "
          f"samples/s; {n / max(work, 1e-9):.0f} samples/s in this process's {work:.1f} s of "
          f"units) "
          f"on {world.size} process(es){where}", file=sys.stderr, flush=True)


def stability_summary(imp: Importance, target: float = 0.95) -> str:
    """One line per layer: how far another seed would agree (``Importance.agreement``) and how
    many samples per class would reach ``target`` (``Importance.samples_needed``)."""
    lines = []
    until = imp.settings.get("until_stable")
    if until is not None:
        target = until
        counts = torch.tensor(imp.settings["samples_reached"], dtype=torch.float64)
        cap = imp.settings["samples_per_class"]
        lines.append(f"chip_fast: until stable (r {until}): {int((counts < cap).sum())} of "
                     f"{len(counts)} classes stopped early; samples per class median "
                     f"{counts.median():,.0f} (from {counts.min():,.0f} to {counts.max():,.0f}, "
                     f"cap {cap:,})")
    needed = imp.samples_needed(target)
    for layer in imp.layers:
        if imp.settings.get("estimators", {}).get(layer) == "exact":
            lines.append(f"chip_fast: {layer}: exact (the limit of sampling; no seed noise)")
            continue
        a, m = imp.agreement.get(layer), needed[layer]
        if a is None or not torch.isfinite(a).any():
            continue
        # inf: a class whose predicted agreement is not positive, which no count is known to fix
        # (nan_to_num's default would print it as float max)
        stuck = int(torch.isinf(m).sum())
        every = (_rounded(m.nan_to_num(0.0, posinf=0.0).max()) + " (every other class; "
                 f"{stuck} with agreement <= 0: unbounded)" if stuck else
                 _rounded(m.nan_to_num(0.0).max()) + " (every class)")
        lines.append(f"chip_fast: {layer}: predicted seed agreement median r {a.nanmedian():.3f} "
                     f"(lowest {a.nan_to_num(2.0).min():.3f}); for r {target} give "
                     f"--samples-per-class {_rounded(m.nanmedian())} (median class), {every}"
                     + ("" if until is not None else
                        f", or --until-stable {target} to give each class what it needs"))
    return "\n".join(lines)


def _rounded(samples: torch.Tensor) -> str:
    """A sample count rounded up to 2 significant figures, as one would type it."""
    x = float(samples)
    if x != x or x == float("inf"):
        return "unbounded"
    step = 10 ** max(0, len(str(int(x))) - 2)
    return f"{-(-int(x) // step) * step:,}"


# -- outputs of distill_all_classes: locks, the default source, removing checkpoints ------------
def output_locks(world: World, out: str | Path | None,
                 checkpoint: str | Path | None) -> ContextManager[Any]:
    """The locks of the output file and the checkpoint folder, held by rank 0 only: the other
    ranks write where rank 0 says, and torchrun stops them all when rank 0 fails to lock.
    (The command line takes them too, before it reads the data; locks nest.)"""
    if not world.is_main:
        return contextlib.nullcontext()
    return locked((out, "output file (--out)"), (checkpoint, "checkpoint folder (--checkpoint)"))


def _remove_checkpoint(folder: Path) -> None:
    """Delete a finished job's checkpoint files, and the folder if nothing else is in it (a
    folder the user named may hold other files: those stay)."""
    # with the temporary files of a save that a crash interrupted (see chip_fast.util.atomic)
    for path in [*folder.glob(CHECKPOINT_GLOB), *folder.glob(f".{CHECKPOINT_GLOB}.*.tmp")]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
    logger.info("chip_fast: removed the checkpoint %s (the result is complete)", folder)
