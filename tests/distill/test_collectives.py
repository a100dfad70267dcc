"""The copies between ranks (``chip_fast.distill.distributed``) through a real process group,
each collective's result checked: gloo at one rank in this process (what ``torchrun
--nproc_per_node=1`` gives; the GPU script runs the same through NCCL, which refuses two ranks
on one GPU) and gloo at two ranks in two spawned processes. One rank used to skip every
collective, so the single-GPU check exercised nothing but the set-up."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from chip_fast.distill import distributed as D
from chip_fast.distill.job import DistillJob
from chip_fast.distill.settings import DistillSettings
from tests.distill.distributed_worker import LAYERS, SETTINGS, make_data, make_model

COLLECTIVES = ("broadcast", "all_gather", "all_gather_object")


def group_values(state, g: int) -> torch.Tensor:
    """A recognisable vector for group g's rows (its last entry: one block done)."""
    n = state.group_size(g)
    out = torch.arange(n, dtype=torch.float64) + 1000.0 * g
    out[-1] = 1.0
    return out


def exercise(rank: int, size: int, store: str) -> dict[str, int]:
    """Every copy between ranks once, on a job whose rows and statistics say which rank made
    them; returns how often each torch.distributed collective ran."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, size), rank=rank,
                            world_size=size)
    counts = dict.fromkeys(COLLECTIVES, 0)
    real = {name: getattr(dist, name) for name in COLLECTIVES}
    for name in COLLECTIVES:
        def counted(*args, _name=name, **kwargs):
            counts[_name] += 1
            return real[_name](*args, **kwargs)
        setattr(dist, name, counted)
    try:
        world, cpu = D.World(rank, size, rank), torch.device("cpu")
        job = DistillJob(make_model(), make_data(), LAYERS, DistillSettings(**SETTINGS))
        state = job.state
        state.set_fill_statistics({l: torch.full((job.plan.channels[l],), float(rank))
                                   for l in LAYERS},
                                  {l: torch.full((job.plan.channels[l],), rank + 1.0)
                                   for l in LAYERS})
        for g in D.owned_groups(len(job.plan.groups), world):
            state.set_group_vector(g, group_values(state, g))
        D.check_same_job(job.identity, world)
        D.broadcast_fill_statistics(state, world, cpu)
        D.gather_groups(state, world, cpu)
        D.gather_atlas(state, world, cpu)
        assert all(torch.equal(state.mu[l], torch.zeros_like(state.mu[l])) for l in LAYERS)
        assert all(torch.equal(state.sigma[l], torch.ones_like(state.sigma[l])) for l in LAYERS)
        for g in range(len(job.plan.groups)):
            assert torch.equal(state.group_vector(g), group_values(state, g)), g
        assert state.done_blocks == [1] * len(job.plan.groups)
    finally:
        for name, fn in real.items():
            setattr(dist, name, fn)
        dist.destroy_process_group()
    return counts


def test_one_rank_under_a_process_group_runs_every_collective(tmp_path, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):   # exercise() sets them; undone after
        monkeypatch.setenv(k, "0")
    counts = exercise(0, 1, str(tmp_path / "store"))
    assert all(counts[c] > 0 for c in COLLECTIVES), counts


def test_a_plain_process_never_touches_a_process_group(tmp_path, monkeypatch):
    """Without RANK/WORLD_SIZE (not a rank), a group the caller made is left alone."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "s"), 1), rank=0,
                            world_size=1)
    try:
        assert not D._collective(D.World())
    finally:
        dist.destroy_process_group()


def _spawned(rank: int, size: int, store: str) -> None:
    counts = exercise(rank, size, store)
    assert all(counts[c] > 0 for c in COLLECTIVES), counts


@pytest.mark.slow   # two spawned processes that import torch: ~10 s
def test_two_ranks_copy_rows_statistics_and_atlas_through_gloo(tmp_path):
    torch.multiprocessing.spawn(_spawned, args=(2, str(tmp_path / "store")), nprocs=2)
