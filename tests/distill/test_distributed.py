"""Distillation under torchrun, on CPU with gloo: same file as one process, resumable, fails fast.

The worker that torchrun starts is this file itself (see ``main`` at the bottom), so the tiny
model and data are defined once. Every process runs with one intra-op thread, as torchrun's
workers do, so CPU float results are comparable bit for bit.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from chip_fast.distill.checkpoint import CheckpointStore
from chip_fast.cli import build_parser
from chip_fast.distill.job import DistillJob
from chip_fast.distill.run import distill_all_classes
from chip_fast.distill.memory import MemoryPlan, parse_bytes, plan_memory
from chip_fast.distill.settings import DistillSettings
from chip_fast.distill.runner import UnitRunner

HERE = Path(__file__).resolve()
LAYERS = ["features.3", "features.5"]
# 8 classes in groups of 2, 48 samples in blocks of 12: 4 groups x 4 blocks = 16 units.
SETTINGS = dict(samples_per_class=48, seed=3, classes_per_unit=2, samples_per_unit=12,
                batch_size=16, fill="noise",   # the fill statistics travel too
                atlas=2)                       # and the channel atlas is gathered


class TinyNet(nn.Module):
    def __init__(self, classes: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def make_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 3, 12, 12, generator=g), torch.arange(8).repeat_interleave(3)


# -- helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["chip_fast"])


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


def test_damaged_or_foreign_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rank-1-of-2.ckpt").write_bytes(b"\x00garbage")
    kw = dict(out=tmp_path / "imp.safetensors", checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"rank-1-of-2.ckpt is damaged"):
        distill_all_classes(make_model(), make_data(), LAYERS, **kw, **SETTINGS)
    (ckpt / "rank-1-of-2.ckpt").unlink()
    distill_all_classes(make_model(), make_data(), LAYERS, **kw, **SETTINGS)
    with pytest.raises(ValueError, match="belongs to another job"):
        distill_all_classes(make_model(), make_data(), LAYERS, **kw, **{**SETTINGS, "seed": 4})
    (ckpt / "x").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        distill_all_classes(make_model(), make_data(), LAYERS,
                            **{**kw, "checkpoint": ckpt / "x"}, **SETTINGS)


def test_memory_budget_maps_to_settings(tmp_path):
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2GB") == 2 * 10**9
    with pytest.raises(ValueError, match="cannot read memory size"):
        parse_bytes("lots")
    model = make_model()
    small = plan_memory(model, (3, 12, 12), LAYERS, "2MiB", classes_per_unit=2,
                        samples_per_class=48)
    assert small == plan_memory(make_model(), (3, 12, 12), LAYERS, 2 * 2**20,
                                classes_per_unit=2, samples_per_class=48)
    assert isinstance(small, MemoryPlan) and small.batch_size >= 1
    big = plan_memory(model, (3, 12, 12), LAYERS, "64GiB", classes_per_unit=2,
                      samples_per_class=48)
    assert (big.batch_size, big.samples_per_unit) == (1024, 64)
    assert small.batch_size < big.batch_size
    with pytest.raises(ValueError, match="too small"):
        plan_memory(model, (3, 12, 12), LAYERS, "10KiB")
    settings = {k: v for k, v in SETTINGS.items() if k not in ("batch_size", "samples_per_unit")}
    out = tmp_path / "imp.safetensors"
    with pytest.raises(ValueError, match="not both"):
        distill_all_classes(model, make_data(), LAYERS, out=out, max_memory="2MiB",
                            progress=False, **SETTINGS)
    imp = distill_all_classes(model, make_data(), LAYERS, out=out, max_memory="2MiB",
                              progress=False, **settings)
    assert imp.settings["max_memory"] == "2MiB"
    assert imp.settings["batch_size"] == small.batch_size
    assert imp.settings["samples_per_unit"] == small.samples_per_unit
    assert read(out)[1]["settings"]["max_memory"] == "2MiB"


def test_cli_options():
    base = ["distill", "--arch", "resnet18", "--data", "d", "--out", "o"]
    args = build_parser().parse_args(base + ["--max-memory", "4GiB", "--dist-timeout", "30"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == ("4GiB", 30.0, 300.0)
    args = build_parser().parse_args(base + ["--checkpoint-every", "60"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == (None, 600.0, 60.0)


# -- the worker torchrun starts -----------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--checkpoint-every", type=float, default=300)
    p.add_argument("--unit-sleep", type=float, default=0.0)
    p.add_argument("--die-rank", type=int, default=-1)
    p.add_argument("--die-after", type=int, default=0, help="units before the rank dies")
    p.add_argument("--seed-rank1", type=int, default=None, help="rank 1 uses another seed")
    a = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    run_unit = UnitRunner.launch
    calls = [0]

    def hooked(self, *args):
        if rank == a.die_rank and calls[0] >= a.die_after:
            os._exit(7)    # abrupt: no cleanup, no message, like a killed process
        calls[0] += 1
        time.sleep(a.unit_sleep)
        return run_unit(self, *args)
    UnitRunner.launch = hooked
    settings = dict(SETTINGS)
    if rank == 1 and a.seed_rank1 is not None:
        settings["seed"] = a.seed_rank1
    distill_all_classes(make_model(), make_data(), LAYERS, out=a.out, checkpoint=a.ckpt,
                        timeout=a.timeout, checkpoint_every=a.checkpoint_every, **settings)


if __name__ == "__main__":
    main()
