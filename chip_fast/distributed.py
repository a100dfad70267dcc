"""Distillation across processes, GPUs and machines (torchrun), resumable after a kill.

Launch the CLI under torchrun (``torchrun --nproc_per_node=8 -m chip_fast.cli distill ...``, see
docs/cluster.md) or call :func:`distill_distributed` from any script started by torchrun. Without
torchrun's environment (``RANK``/``WORLD_SIZE``) it runs as one process, with the same result.

How the work is shared, and why the result is bit-for-bit the one-process result:

* A ``DistillJob`` is cut into units (class group g x sample block b). Group g belongs to rank
  ``g % world_size``; a rank runs its groups' blocks in order. Groups touch disjoint class rows,
  so every row is summed in exactly the order one process would use.
* The fill statistics (mu, sigma) are measured (or read from a checkpoint) on rank 0 and
  broadcast, so every rank perturbs with the same numbers even on mixed hardware.
* While working, ranks do not talk to each other (no collective can time out because one rank
  has more groups than another). A rank that finishes posts "done" in the rendezvous store and
  waits, watching the others' heartbeats: a rank that exits, crashes or stops beating for
  ``timeout`` seconds makes the waiting ranks fail with a message naming it, instead of hanging.
* At the end every owner broadcasts its groups' rows (an explicit copy, no arithmetic), rank 0
  solves the sparse fit and writes the importance file atomically.

Checkpoints: each rank writes ``checkpoint_dir/rank-{rank}-of-{world}.ckpt`` (the format of
``DistillJob.save_checkpoint``: the whole job state plus per-group ``done_blocks``). On start,
every rank reads *all* ``rank-*-of-*.ckpt`` files in the folder and takes, for each group, the rows
of the file that has the most blocks of that group done. A snapshot's rows always match its own
``done_blocks``, so this is correct whatever world size wrote the files: a job killed on 16
GPUs can resume on 4, and stale files of an older world size are harmless. A file of another job
(model, data, layers, classes or settings differ) or a damaged file stops the job with its name.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .data import as_source
from .distill import DistillJob, DistillSettings, Unit
from .importance import Importance
from .layers import check_layers, default_layers

logger = logging.getLogger("chip_fast")

CHECKPOINT_GLOB = "rank-*-of-*.ckpt"
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """Another rank died, failed or stopped answering."""


# -- who am I ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting RANK and
    WORLD_SIZE the same way)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_from_env() -> World:
    if not launched_by_torchrun():
        return World()
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {e}") from e
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={size}")
    return World(rank, size, local)


def owned_groups(n_groups: int, world: World) -> list[int]:
    """Groups of this rank: g % world_size == rank (deterministic, needs no communication)."""
    return [g for g in range(n_groups) if g % world.size == world.rank]


# -- memory budget -----------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'4GiB', '512MiB', '8G' (decimal), '1e9' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {text!r}: write e.g. 4GiB, 512MiB or 8GB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"memory size {text!r} is not positive")
    return int(value)


@dataclass(frozen=True)
class MemoryPlan:
    """Batch size and samples per unit chosen from a memory budget, and the sizes behind them."""
    budget: int
    batch_size: int
    samples_per_unit: int
    per_sample_bytes: int     # one perturbed sample in a tail forward
    per_view_bytes: int       # one cached view (the layers' activations)
    model_bytes: int


BATCH_CAP = 1024          # beyond this, GPUs gain little and the float results still change
UNIT_CAP = 512            # the DistillSettings default: checkpoint granularity stays fine


def _floor_pow2(x: float) -> int:
    return 1 << int(math.floor(math.log2(x))) if x >= 1 else 0


def _activation_sizes(model: nn.Module, image_shape: Sequence[int], layers: Sequence[str]
                      ) -> tuple[dict[str, int], dict[str, int], int]:
    """Per-sample bytes of each layer's output, of the largest leaf output after each layer, and
    of the largest leaf output anywhere, from one forward pass of a blank image."""
    records: list[tuple[str, int]] = []
    hooks = []
    wanted = set(layers)

    def hook(name):
        def record(_m, _i, out):
            if torch.is_tensor(out):
                records.append((name, out[0].numel() * out.element_size()))
        return record
    try:
        for name, m in model.named_modules():
            if name and (name in wanted or not list(m.children())):
                hooks.append(m.register_forward_hook(hook(name)))
        p = next(model.parameters())
        with torch.inference_mode():
            model(torch.zeros(1, *image_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    layer_bytes, tail_max = {}, {}
    for layer in layers:
        i = max(j for j, (n, _) in enumerate(records) if n == layer)
        layer_bytes[layer] = records[i][1]
        tail_max[layer] = max([b for _, b in records[i + 1:]] or [records[i][1]])
    return layer_bytes, tail_max, max(b for _, b in records)


def plan_memory(model: nn.Module, image_shape: Sequence[int], layers: Sequence[str],
                budget: int | str, *, classes_per_unit: int = 8, samples_per_class: int = 2048
                ) -> MemoryPlan:
    """Choose ``batch_size`` and ``samples_per_unit`` so a unit fits in ``budget`` bytes.

    With, per sample and in the model's dtype, A_l the output of layer l, T_l the largest module
    output after l, M the largest anywhere, P the parameters and buffers:

        usable          = 0.75 * budget - P            (25% for the allocator and the runtime)
        per_sample      = max over l of (3 * A_l + 3 * T_l)   perturbed copy + noise + values,
                                                             and a tail op's input and output
        batch_size      = largest power of 2 with batch_size * max(per_sample, 2 M) <= usable / 2
        per_view        = sum over l of A_l           (the unit's cached prefix outputs)
        samples_per_unit = largest power of 2 with classes_per_unit * samples_per_unit * per_view
                           <= usable / 2              (worst case: every sample its own view)

    capped at 1024 and 512. The result depends only on the architecture, the image size, the
    layers and the budget, never on the machine, so a budget names the same settings (and so the
    same floats: batch composition changes them slightly) everywhere; the settings and the
    budget are written into the importance file.
    """
    budget = parse_bytes(budget)
    layer_bytes, tail_max, largest = _activation_sizes(model, image_shape, layers)
    model_bytes = sum(t.numel() * t.element_size()
                      for t in list(model.parameters()) + list(model.buffers()))
    usable = 0.75 * budget - model_bytes
    per_sample = max(3 * layer_bytes[l] + 3 * tail_max[l] for l in layers)
    per_view = sum(layer_bytes.values())
    batch = min(BATCH_CAP, _floor_pow2(usable / 2 / max(per_sample, 2 * largest)))
    unit_cap = min(UNIT_CAP, 1 << math.ceil(math.log2(max(samples_per_class, 1))))
    unit = min(unit_cap, _floor_pow2(usable / 2 / (classes_per_unit * per_view)))
    if batch < 1 or unit < 1:
        need = (model_bytes + 2 * max(per_sample, 2 * largest, classes_per_unit * per_view)) / 0.75
        raise ValueError(f"a memory budget of {budget / 2**20:.0f} MiB is too small for this "
                         f"model and layers: it needs at least {need / 2**20:.0f} MiB")
    return MemoryPlan(budget, batch, unit, per_sample, per_view, model_bytes)


# -- talking to the other ranks ------------------------------------------------------------------
class _Peers:
    """The rendezvous store for liveness and progress; a no-op for a single process.

    Keys carry torchrun's restart count, so a restarted job never reads the keys of an earlier
    attempt.
    """

    def __init__(self, world: World, timeout: float, beat_every: float) -> None:
        self.world = world
        self.timeout = timeout
        self.beat_every = beat_every
        self.store = None
        self.progress_local = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if world.size > 1:
            base = dist.distributed_c10d._get_default_store()
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            self.prefix = f"chip_fast/{attempt}/"
            self.store = dist.PrefixStore(self.prefix, base)
            # The heartbeat thread gets its own connection: store clients are not shared safely.
            self._beat_store = dist.PrefixStore(self.prefix, base.clone()) \
                if hasattr(base, "clone") else self.store

    def start_heartbeat(self) -> None:
        if self.store is None:
            return

        def beat() -> None:
            count = 0
            while not self._stop.is_set():
                count += 1
                try:
                    self._beat_store.set(f"beat/{self.world.rank}", str(count))
                except Exception:  # the store is gone: the main thread will find out itself
                    return
                self._stop.wait(self.beat_every)
        self._thread = threading.Thread(target=beat, name="chip_fast-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def post_progress(self, samples: int) -> None:
        self.progress_local = samples
        if self.store is not None:
            self.store.set(f"progress/{self.world.rank}", str(samples))

    def total_progress(self) -> int:
        if self.store is None:
            return self.progress_local
        keys = [f"progress/{r}" for r in range(self.world.size)]
        present = [k for k in keys if self.store.check([k])]
        return sum(int(v) for v in self.store.multi_get(present)) if present else 0

    def post_failure(self, why: str) -> None:
        if self.store is not None:
            try:
                self.store.set(f"failed/{self.world.rank}", why[:2000])
            except Exception:
                pass

    def wait_for_all(self, stage: str, on_poll: Callable[[], None] = lambda: None) -> None:
        """Post that this rank reached ``stage``, then return when every rank has; raise
        DistributedError when one failed, or its heartbeat has not changed for ``timeout``
        seconds. Unlike a barrier, waiting here has no time limit while the others are alive."""
        if self.store is None:
            return
        store, size = self.store, self.world.size
        store.set(f"{stage}/{self.world.rank}", "1")
        # Every waiting rank polls every rank's keys: slow down with the size of the job so the
        # store serves a few thousand requests a second at most.
        poll = max(0.5, size / 50)
        seen: dict[int, tuple[str | None, float]] = {}
        while True:
            if store.check([f"{stage}/{r}" for r in range(size)]):
                return
            for r in range(size):
                if store.check([f"failed/{r}"]):
                    why = store.get(f"failed/{r}").decode(errors="replace")
                    raise DistributedError(f"rank {r} failed: {why}")
            waiting = [r for r in range(size) if not store.check([f"{stage}/{r}"])]
            if not waiting:
                return
            now = time.monotonic()
            for r in waiting:
                beat = store.get(f"beat/{r}").decode() if store.check([f"beat/{r}"]) else None
                last_beat, since = seen.get(r, (None, now))
                if beat != last_beat or r not in seen:
                    seen[r] = (beat, now)
                elif now - since > self.timeout:
                    raise DistributedError(
                        f"rank {r} has not been heard from for {now - since:.0f} s (limit "
                        f"{self.timeout:.0f} s): it died or hangs. Its finished work is in its "
                        "checkpoint; rerun the same command to resume")
            on_poll()
            time.sleep(poll)


def _comm_device(world: World, device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_fill_statistics(job: DistillJob, world: World, have_stats: bool) -> None:
    """Rank 0's mu/sigma to every rank: one source of truth even across different devices."""
    if job.settings.fill == "zero":
        return
    if world.is_main and not have_stats:
        with torch.inference_mode():
            job.fill_statistics()
    if world.size == 1:
        return
    dev = _comm_device(world, job.device)
    for layer in job.layers:
        k = job.channels[layer]
        for name in ("mu", "sigma"):
            table = getattr(job, name)
            t = table[layer].to(dev).clone() if world.is_main else torch.empty(k, device=dev)
            dist.broadcast(t, src=0)
            table[layer] = t.to(job.device)


def _check_same_job(identity: str, world: World) -> None:
    """Refuse to run when ranks see different jobs (e.g. another copy of the data on a node):
    their rows would not add up to any one-process result."""
    if world.size == 1:
        return
    seen: list[Any] = [None] * world.size
    dist.all_gather_object(seen, (identity, socket.gethostname()))
    differ = [f"{r} ({host})" for r, (ident, host) in enumerate(seen) if ident != seen[0][0]]
    if differ:
        raise ValueError(f"rank(s) {', '.join(differ)} see another job than rank 0 on "
                         f"{seen[0][1]}: the model weights, data, layers, classes or settings "
                         "differ between processes; every node needs the same files and options")


def _gather_sums(job: DistillJob, world: World) -> None:
    """Copy every group's rows and progress from its owner to all ranks (broadcast, no sums)."""
    if world.size == 1:
        return
    dev = _comm_device(world, job.device)
    for owner in range(world.size):
        groups = owned_groups(len(job.groups), World(owner, world.size))
        if not groups:
            continue
        parts = []
        if world.rank == owner:
            for g in groups:
                s = job.group_rows(g)
                for layer in job.layers:
                    parts += [job.sum_zy[layer][s].flatten(), job.sum_y[layer][s]]
                parts.append(torch.tensor([float(job.done_blocks[g])], dtype=torch.float64))
            flat = torch.cat(parts).to(dev)
        else:
            n = sum(len(job.groups[g]) * (job.channels[l] + 1) for g in groups for l in job.layers)
            flat = torch.empty(n + len(groups), dtype=torch.float64, device=dev)
        dist.broadcast(flat, src=owner)
        if world.rank == owner:
            continue
        flat, at = flat.cpu(), 0
        for g in groups:
            s = job.group_rows(g)
            for layer in job.layers:
                k, n = job.channels[layer], len(s)
                job.sum_zy[layer][s] = flat[at:at + n * k].view(n, k)
                job.sum_y[layer][s] = flat[at + n * k:at + n * k + n]
                at += n * k + n
            job.done_blocks[g] = int(flat[at])
            at += 1


# -- checkpoints --------------------------------------------------------------------------------
def checkpoint_path(checkpoint_dir: str | Path, world: World) -> Path:
    return Path(checkpoint_dir) / f"rank-{world.rank}-of-{world.size}.ckpt"


def resume(job: DistillJob, checkpoint_dir: str | Path | None) -> bool:
    """Load, per group, the most advanced state found in the folder's checkpoint files (written
    by any world size). Returns True when fill statistics were found (so they need not be
    measured again)."""
    if checkpoint_dir is None:
        return False
    folder = Path(checkpoint_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} is a file: distributed runs keep one "
                         "checkpoint per rank in a folder")
    files = sorted(folder.glob(CHECKPOINT_GLOB)) if folder.is_dir() else []
    if not files:
        return False
    have_stats = job.restore(files)
    logger.warning("chip_fast: resuming from %d checkpoint file(s) in %s (%d of %d units done)",
                   len(files), folder, sum(job.done_blocks), len(job.units))
    return have_stats


# -- stopping cleanly on SIGTERM ----------------------------------------------------------------
class _Stopper:
    """On SIGTERM/SIGINT save the checkpoint and exit 128+signal.

    The job state (sums + done_blocks) is consistent except while a finished unit is being
    added or a checkpoint written; a signal then is served right after. A unit in flight is
    dropped (it is redone on resume), so preemption costs at most one unit."""

    def __init__(self, save: Callable[[], None]) -> None:
        self.save = save
        self.busy = False
        self.pending: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.busy:
            self.pending = signum
            return
        self._exit(signum)

    def _exit(self, signum: int) -> None:
        self.busy = True   # a second signal while saving must not interrupt the save
        logger.warning("chip_fast: %s received, saving the checkpoint and stopping",
                       signal.Signals(signum).name)
        self.save()
        raise SystemExit(128 + signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
        if self.pending is not None:
            self._exit(self.pending)

    @contextmanager
    def installed(self) -> Iterator["_Stopper"]:
        if threading.current_thread() is not threading.main_thread():
            yield self   # signals reach only the main thread; nothing to install
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)


# -- the whole job ------------------------------------------------------------------------------
def _pick_device(world: World, device: str | torch.device | None) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", world.local_rank)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", world.local_rank)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"rank {world.rank} wants {dev} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): start at most that many "
                             "processes per node")
        torch.cuda.set_device(dev)
    return dev


def _init_process_group(world: World, device: torch.device, timeout: float) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout),
                            rank=world.rank, world_size=world.size,
                            device_id=device if backend == "nccl" else None)


def _settings(model: nn.Module, source, layers: list[str], max_memory: str | int | None,
              kwargs: dict[str, Any]) -> tuple[DistillSettings, MemoryPlan | None]:
    if max_memory is None:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return DistillSettings(**kwargs), None
    for k in ("batch_size", "samples_per_unit"):
        if kwargs.get(k) is not None:
            raise ValueError(f"give {k} or max_memory, not both: the budget chooses {k}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    probe = DistillSettings(**kwargs)
    image = source.load(source.classes[0], 0)
    plan = plan_memory(model, tuple(image.shape), layers, max_memory,
                       classes_per_unit=probe.classes_per_unit,
                       samples_per_class=probe.samples_per_class)
    return dataclasses.replace(probe, batch_size=plan.batch_size,
                               samples_per_unit=plan.samples_per_unit), plan


def _run_own_units(job: DistillJob, units: list[Unit], peers: _Peers, world: World,
                   ckpt: Path | None, checkpoint_every: float, progress: bool) -> None:
    """This rank's units through the job's one unit loop, with a SIGTERM/SIGINT handler that
    saves, and a bar (rank 0's) that counts every rank's samples."""
    mine = 0
    bar = job.progress_bar(progress and world.is_main, label=f" x{world.size}")
    done_before = bar.n

    def refresh() -> None:
        if not bar.disable:
            bar.update(done_before + peers.total_progress() - bar.n)

    def on_unit(samples: int) -> None:
        nonlocal mine
        mine += samples
        peers.post_progress(mine)
        refresh()

    stopper = _Stopper(lambda: job.save_checkpoint(ckpt) if ckpt is not None else None)
    with stopper.installed(), bar:
        job.run_pending(units, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                        on_unit=on_unit, critical=stopper.critical)
        peers.wait_for_all("done", on_poll=refresh)
        refresh()


def distill_distributed(model: nn.Module, data, layers: Sequence[str] | None = None, *,
                        out: str | Path, checkpoint_dir: str | Path | None = None,
                        classes: Iterable[int] | None = None, max_memory: str | int | None = None,
                        timeout: float = DEFAULT_TIMEOUT_S, checkpoint_every: float = 300.0,
                        device: str | torch.device | None = None, progress: bool = True,
                        **distill_kwargs: Any) -> Importance | None:
    """Distil with every process torchrun started (or alone), resumable; rank 0 writes ``out``.

    ``distill_kwargs`` are DistillSettings fields (samples_per_class, seed, augment, batch_size,
    classes_per_unit, samples_per_unit, ...); None values take the defaults. ``max_memory``
    ('4GiB') chooses batch_size and samples_per_unit instead (see :func:`plan_memory`).
    ``timeout`` (s): how long a collective or a silent rank may take before the job fails.
    ``device``: default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. The model is moved
    there and put in eval mode. Returns the Importance on rank 0, None on the other ranks.
    """
    world = world_from_env()
    started = time.monotonic()
    dev = _pick_device(world, device)
    was_training = model.training
    model.to(dev).eval()
    source = as_source(data)
    layers = check_layers(model, layers if layers is not None else default_layers(model))
    settings, plan = _settings(model, source, layers, max_memory, dict(distill_kwargs))
    job = DistillJob(model, source, layers, settings, classes)
    ckpt = checkpoint_path(checkpoint_dir, world) if checkpoint_dir is not None else None
    if world.size > 1 or launched_by_torchrun():
        _init_process_group(world, dev, timeout)
    peers = _Peers(world, timeout, beat_every=min(5.0, timeout / 4))
    try:
        peers.start_heartbeat()
        _check_same_job(job.identity(), world)
        have_stats = resume(job, checkpoint_dir)
        _broadcast_fill_statistics(job, world, have_stats)
        units = job.pending(owned_groups(len(job.groups), world))
        work_started = time.monotonic()
        _run_own_units(job, units, peers, world, ckpt, checkpoint_every, progress)
        work = time.monotonic() - work_started
        _gather_sums(job, world)
        result = None
        if world.is_main:
            missing = [g for g, d in enumerate(job.done_blocks) if d != job.blocks]
            if missing:
                raise DistributedError(f"class groups {missing[:10]} are unfinished after the run")
            result = job.finish()
            if plan is not None:
                result.settings["max_memory"] = str(max_memory)
            result.save(out)
            _summary(job, world, peers, time.monotonic() - started, work, out)
        # The others wait for the file without a time limit (rank 0's solve may be long), then
        # a barrier, immediate by then, keeps the store's host alive until everyone has looked.
        peers.wait_for_all("saved")
        if dist.is_initialized():
            dist.barrier()
        return result
    except BaseException as e:  # SystemExit from SIGTERM too: the others stop waiting at once
        peers.post_failure(f"{type(e).__name__}: {e}")
        raise
    finally:
        job.close()
        peers.stop()
        if dist.is_initialized():
            dist.destroy_process_group()
        model.train(was_training)


def _summary(job: DistillJob, world: World, peers: _Peers, wall: float, work: float,
             out: str | Path) -> None:
    n = peers.total_progress()
    print(f"chip_fast: {len(job.classes)} classes x {len(job.layers)} layer(s), {n} perturbed "
          f"samples this run in {wall:.1f} s wall ({n / max(wall, 1e-9):.0f} samples/s; "
          f"{n / max(work, 1e-9):.0f} samples/s in the {work:.1f} s after start-up) on "
          f"{world.size} process(es); wrote {out}", file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------------------------
def configure_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of distributed / budgeted distillation to the ``distill`` subcommand.

    Options the parser already has (e.g. the CLI's own --max-memory) are left as they are."""
    have = {o for a in parser._actions for o in a.option_strings}
    group = parser.add_argument_group("cluster (torchrun) and memory")

    def add(flag: str, **kw: Any) -> None:
        if flag not in have:
            group.add_argument(flag, **kw)
    add("--max-memory", default=None, metavar="SIZE",
        help="memory budget per process, e.g. 4GiB: chooses the batch size and the samples per "
             "unit (recorded in the output; do not give --batch-size with it)")
    add("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
        help="seconds a collective or a silent rank may take before the job fails "
             f"(default {DEFAULT_TIMEOUT_S:.0f})")
    add("--checkpoint-every", type=float, default=300.0, metavar="S",
        help="seconds between checkpoints (default 300)")
    return parser


def distributed_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`distill_distributed` that configure_distributed_args
    added."""
    return {"max_memory": args.max_memory, "timeout": args.dist_timeout,
            "checkpoint_every": args.checkpoint_every}
