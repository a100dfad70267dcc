"""Distillation across processes, GPUs and machines (torchrun): the mechanics between ranks.

``chip_fast.distill_all_classes`` is the one entry point: started by torchrun (or any launcher
that sets ``RANK``/``WORLD_SIZE``), it shards the work with the pieces here; alone, it runs the
same code as one rank. This module owns who does what, liveness, and the copies between ranks;
it reaches the job's state only through ``DistillState``'s methods.

Why the result is bit-for-bit the one-process result:

* The job is cut into units (class group g x sample block b). Group g belongs to rank
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

Checkpoints (one file per rank, merged on resume at any world size) are ``chip_fast.distill.checkpoint``.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .state import DistillState

logger = logging.getLogger("chip_fast")

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


# -- talking to the other ranks ------------------------------------------------------------------
class Peers:
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


def _collective(world: World) -> bool:
    """Whether the copies between ranks run: in a job of several ranks, and also at one rank
    under torchrun, where the process group exists; the copies then go through the backend for
    real (the GPU check runs NCCL so), with the same result as no copy. A process that was not
    started as a rank never touches a process group, even one its caller made."""
    return world.size > 1 or (launched_by_torchrun() and dist.is_initialized())


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_fill_statistics(state: DistillState, world: World, device: torch.device) -> None:
    """Rank 0's mu/sigma to every rank: one source of truth even across different devices."""
    if not _collective(world):
        return
    dev = _comm_device(device)
    mu, sigma = {}, {}
    for layer in state.plan.layers:
        k = state.plan.channels[layer]
        for table, own in ((mu, state.mu), (sigma, state.sigma)):
            t = own[layer].to(dev).clone() if world.is_main else torch.empty(k, device=dev)
            dist.broadcast(t, src=0)
            table[layer] = t.to(device)
    state.set_fill_statistics(mu, sigma)


def check_same_job(identity: str, world: World) -> None:
    """Refuse to run when ranks see different jobs (e.g. another copy of the data on a node):
    their rows would not add up to any one-process result."""
    if not _collective(world):
        return
    seen: list[Any] = [None] * world.size
    dist.all_gather_object(seen, (identity, socket.gethostname()))
    differ = [f"{r} ({host})" for r, (ident, host) in enumerate(seen) if ident != seen[0][0]]
    if differ:
        raise ValueError(f"rank(s) {', '.join(differ)} see another job than rank 0 on "
                         f"{seen[0][1]}: the model weights, data, layers, classes or settings "
                         "differ between processes; every node needs the same files and options")


def gather_groups(state: DistillState, world: World, device: torch.device) -> None:
    """Copy every group's rows and progress from its owner to all ranks (broadcast, no sums)."""
    if not _collective(world):
        return
    dev = _comm_device(device)
    for owner in range(world.size):
        groups = owned_groups(len(state.plan.groups), World(owner, world.size))
        if not groups:
            continue
        if world.rank == owner:
            flat = torch.cat([state.group_vector(g) for g in groups]).to(dev)
        else:
            n = sum(state.group_size(g) for g in groups)
            flat = torch.empty(n, dtype=torch.float64, device=dev)
        dist.broadcast(flat, src=owner)
        if world.rank == owner:
            continue
        flat, at = flat.cpu(), 0
        for g in groups:
            state.set_group_vector(g, flat[at:at + state.group_size(g)])
            at += state.group_size(g)


def gather_atlas(state: DistillState, world: World, device: torch.device) -> None:
    """Merge every rank's channel atlas into every rank's (each rank saw its own units' views;
    the merge keeps each channel's k strongest, one per view, whatever the order)."""
    if not _collective(world) or state.atlas is None:
        return
    from ..atlas.collect import ChannelAtlas
    dev = _comm_device(device)
    # Every rank's atlas has the same layers and shapes (ChannelAtlas.empty), so the tensors
    # gather as they are.
    mine = state.atlas.to_tensors()
    theirs: list[dict[str, torch.Tensor]] = [{} for _ in range(world.size)]
    for name, t in mine.items():
        parts = [torch.empty_like(t, device=dev) for _ in range(world.size)]
        dist.all_gather(parts, t.to(dev))
        for r in range(world.size):
            theirs[r][name] = parts[r].cpu()
    for r in range(world.size):
        if r != world.rank:
            state.merge_atlas(ChannelAtlas.from_tensors(theirs[r]))


# -- stopping cleanly on SIGTERM ----------------------------------------------------------------
class Stopper:
    """On SIGTERM/SIGINT save the checkpoint (when there is one), then stop: SystemExit(143)
    for SIGTERM, KeyboardInterrupt for SIGINT (as Python would).

    The job state (sums + done_blocks) is consistent except while a finished unit is being
    added or a checkpoint written; a signal then is served right after. A unit in flight is
    dropped (it is redone on resume), so preemption costs at most one unit."""

    def __init__(self, save: Callable[[], None] | None) -> None:
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
        name = signal.Signals(signum).name
        if self.save is None:
            logger.warning("chip_fast: %s received, stopping; there is no checkpoint, so the "
                           "work done is lost (give a checkpoint folder to resume)", name)
        else:
            logger.warning("chip_fast: %s received, saving the checkpoint and stopping", name)
            self.save()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
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
    def installed(self) -> Iterator["Stopper"]:
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
def pick_device(world: World, device: str | torch.device | None, model: nn.Module,
                distributed: bool) -> torch.device:
    """The device of this process: ``device`` (``cuda`` meaning ``cuda:LOCAL_RANK``); by default
    the model's own device, or under torchrun ``cuda:LOCAL_RANK`` when CUDA is available."""
    if device is None and not distributed:
        return next(model.parameters()).device
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", world.local_rank)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", world.local_rank)
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        if torch.cuda.device_count() == 0:
            raise ValueError(f"device {device or dev} asked for, but torch sees no CUDA device "
                             "here (no GPU, driver or CUDA build of torch): use device='cpu'")
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"rank {world.rank} wants {dev} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): start at most that many "
                             "processes per node")
        torch.cuda.set_device(dev)
    return dev


def init_process_group(world: World, device: torch.device, timeout: float) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout),
                            rank=world.rank, world_size=world.size,
                            device_id=device if backend == "nccl" else None)


