"""Distillation under torchrun, on CPU with gloo: same file as one process, resumable, fails fast.

The worker that torchrun starts is ``distributed_worker.py`` beside this file (see its
``main``), which also defines the tiny model and data, so they are defined once. Every process
runs with one intra-op thread, as torchrun's workers do, so CPU float results are comparable bit
for bit.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chip_fast.distill.checkpoint import CheckpointStore
from chip_fast.distill.job import DistillJob
from chip_fast.distill.run import distill_all_classes
from chip_fast.distill.settings import DistillSettings
from tests.distill.distributed_worker import (LAYERS, SETTINGS, UNTIL_STABLE, make_data, make_model,
                                             read)

HERE = Path(__file__).resolve().with_name("distributed_worker.py")   # the worker torchrun starts


# -- helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def assert_same_file(a: Path, b: Path) -> None:
    ta, ma = read(a)
    tb, mb = read(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"tensor {k} differs"
    assert ma == mb
    assert a.read_bytes() == b.read_bytes()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def worker_args(out: Path, ckpt: Path, *extra: str) -> list[str]:
    return [str(HERE), "--out", str(out), "--ckpt", str(ckpt), *extra]


def torchrun(nproc: int, args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the job hung for {timeout} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    # One thread as in torchrun's workers; on a busy machine it is also ~50x faster here.
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The plain one-process library result."""
    path = tmp_path_factory.mktemp("ref") / "ref.safetensors"
    with one_thread():
        imp = distill_all_classes(make_model(), make_data(), LAYERS, progress=False, **SETTINGS)
    imp.save(path)
    return path


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.slow   # starts torchrun: ~10 s of process start-up per launch
def test_two_processes_equal_one(tmp_path, reference):
    out = tmp_path / "imp.safetensors"
    code, log = finish(torchrun(2, worker_args(out, tmp_path / "ckpt")))
    assert code == 0, log[-3000:]
    assert_same_file(out, reference)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["rank-0-of-2.ckpt",
                                                                    "rank-1-of-2.ckpt"]
    assert "samples/s" in log


@pytest.mark.slow   # starts torchrun: ~10 s of process start-up per launch
def test_until_stable_two_processes_equal_one(tmp_path):
    """Each rank decides its own groups' stops from their sums alone: the same file."""
    ref = tmp_path / "ref.safetensors"
    with one_thread():
        distill_all_classes(make_model(), make_data(), LAYERS, progress=False,
                            **UNTIL_STABLE).save(ref)
    out = tmp_path / "imp.safetensors"
    code, log = finish(torchrun(2, worker_args(out, tmp_path / "ckpt", "--until-stable")))
    assert code == 0, log[-3000:]
    assert_same_file(out, ref)
    assert "stopped early" in log


@pytest.mark.slow   # starts torchrun: ~10 s of process start-up per launch
def test_killed_job_resumes_to_the_same_file(tmp_path, reference):
    out, ckpt = tmp_path / "imp.safetensors", tmp_path / "ckpt"
    args = worker_args(out, ckpt, "--unit-sleep", "0.15", "--checkpoint-every", "0")
    proc = torchrun(2, args)
    deadline = time.monotonic() + 60
    while not list(ckpt.glob("rank-*.ckpt")):
        assert proc.poll() is None, finish(proc)[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not out.exists(), "the job finished before it was killed"
    code, log = finish(torchrun(2, args))
    assert code == 0, log[-3000:]
    assert "resuming from" in log
    assert_same_file(out, reference)


@pytest.mark.slow   # starts torchrun: ~10 s of process start-up per launch
def test_dead_rank_stops_the_job_under_torchrun(tmp_path):
    """torchrun sees rank 1 exit and SIGTERMs rank 0, which saves its checkpoint and exits."""
    ckpt = tmp_path / "ckpt"
    args = worker_args(tmp_path / "imp.safetensors", ckpt, "--die-rank", "1", "--die-after", "1",
                       "--unit-sleep", "0.5", "--checkpoint-every", "1e9", "--timeout", "20")
    t0 = time.monotonic()
    code, log = finish(torchrun(2, args), timeout=60)
    assert code != 0
    assert time.monotonic() - t0 < 40, log[-3000:]
    assert "SIGTERM received" in log, log[-3000:]
    assert (ckpt / "rank-0-of-2.ckpt").exists()     # saved by the SIGTERM handler only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_by_hand(args: list[str]) -> list[subprocess.Popen]:
    """Two ranks started without torchrun's agent, as a plain `srun python ...` would."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = clean_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    return procs


@pytest.mark.slow   # starts two Python processes: ~7 s of start-up
def test_dead_rank_is_detected_without_torchrun(tmp_path):
    """No agent to clean up: the waiting rank notices that the other went silent."""
    procs = launch_by_hand(worker_args(tmp_path / "imp.safetensors", tmp_path / "ckpt",
                                       "--die-rank", "1", "--die-after", "1", "--timeout", "4"))
    t0 = time.monotonic()
    code0, log0 = finish(procs[0], timeout=60)
    code1, _ = finish(procs[1], timeout=10)
    assert code1 == 7
    assert code0 != 0
    assert "rank 1 has not been heard from" in log0, log0[-3000:]
    assert time.monotonic() - t0 < 40


@pytest.mark.slow   # starts two Python processes: ~7 s of start-up
def test_ranks_that_see_different_jobs_are_refused(tmp_path):
    procs = launch_by_hand(worker_args(tmp_path / "imp.safetensors", tmp_path / "ckpt",
                                       "--seed-rank1", "5"))
    for proc in procs:
        code, log = finish(proc, timeout=60)
        assert code != 0
        assert "rank(s) 1 (" in log and "see another job than rank 0" in log, log[-3000:]
    assert not (tmp_path / "imp.safetensors").exists()


def test_resume_with_another_world_size(tmp_path, reference):
    """Checkpoints of a 2-rank run (and a stale one of a 4-rank run) finish in one process."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with one_thread():
        def partial(units, rank, world):
            job = DistillJob(make_model(), make_data(), LAYERS, DistillSettings(**SETTINGS))
            job.measure_fill_statistics()
            job.run_pending([u for u in job.plan.units if (u.group, u.block) in units])
            CheckpointStore(ckpt, job.identity, rank, world).save(job.state)
        partial({(0, 0), (0, 1), (0, 2), (0, 3), (2, 0), (2, 1)}, 0, 2)
        partial({(1, 0)}, 1, 2)
        partial({(0, 0)}, 0, 4)
        assert sorted(p.name for p in ckpt.iterdir()) == [
            "rank-0-of-2.ckpt", "rank-0-of-4.ckpt", "rank-1-of-2.ckpt"]
        job = DistillJob(make_model(), make_data(), LAYERS, DistillSettings(**SETTINGS))
        assert CheckpointStore(ckpt, job.identity).restore(job.state, torch.device("cpu"))
        assert job.state.done_blocks == [4, 1, 2, 0]
        out = tmp_path / "imp.safetensors"
        distill_all_classes(make_model(), make_data(), LAYERS, out=out, checkpoint=ckpt,
                            progress=False, **SETTINGS)
    assert_same_file(out, reference)
