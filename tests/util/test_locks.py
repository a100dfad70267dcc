"""Locks on what a run writes (``chip_fast.util.locks``): one run per output file and checkpoint
folder, the refused run names the holder, a crashed holder leaves no stale lock; on the CLI, the
second distill fails at once."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chip_fast
from chip_fast.util import locks
from chip_fast.util.locks import FileLock, LockedError, lock_path

HOLD = """
import sys, time
from chip_fast.util.locks import FileLock
FileLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start another process that holds the lock of a path; yields a function doing that."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_lock_records_its_holder_and_is_removed_on_release(tmp_path):
    out = tmp_path / "x.chip"
    with FileLock(out) as lock:
        assert lock.held and lock.path == tmp_path / "x.chip.lock"
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert not lock_path(out).exists()
    with FileLock(out):   # free again
        pass


def test_locks_nest_within_one_process(tmp_path):
    out = tmp_path / "x.chip"
    with FileLock(out), FileLock(out):
        pass
    assert not lock_path(out).exists()


def test_lock_held_by_another_process_is_refused_naming_it(tmp_path, holder):
    out = tmp_path / "x.chip"
    other = holder(out)
    t0 = time.monotonic()
    with pytest.raises(LockedError) as e:
        FileLock(out, "output file (--out)").acquire()
    assert time.monotonic() - t0 < 1.0       # refused at once, not after a wait
    msg = str(e.value)
    assert f"pid {other.pid} on host {socket.gethostname()}" in msg
    assert "in use by another chip-fast run" in msg and "choose another output file" in msg


def test_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    out = tmp_path / "x.chip"
    other = holder(out)
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    assert lock_path(out).exists()           # the file stays, the OS lock went with the process
    with FileLock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()


def test_without_os_locking_a_warning_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    monkeypatch.setattr(locks, "msvcrt", None)
    with pytest.warns(UserWarning, match="no file locking on this platform"):
        with FileLock(tmp_path / "x.chip"):
            pass


def test_distill_refuses_a_checkpoint_folder_in_use(tiny_net, tiny_data, tmp_path, holder):
    ckpt = tmp_path / "job-ckpt"
    other = holder(ckpt)
    with pytest.raises(LockedError, match=f"pid {other.pid}"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                      progress=False, checkpoint=ckpt)
    assert not ckpt.exists()


def test_second_cli_distill_on_the_same_out_fails_at_once(tmp_path, holder, capsys):
    """The lock is taken before the model loads or the data is read: the data folder and the
    architecture here do not even exist, and the answer is still the lock."""
    from chip_fast.cli import main
    out = tmp_path / "x.chip"
    other = holder(out)
    rc = main(["distill", "--arch", "mobilenet_v2", "--data", str(tmp_path / "nowhere"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {other.pid}" in err and "in use by another chip-fast run" in err
    assert err.count("\n") == 1 and not out.exists()
    assert not (tmp_path / "x.chip.ckpt").exists()


def test_a_lock_file_that_cannot_be_removed_does_not_hide_the_runs_own_error(tmp_path,
                                                                               monkeypatch):
    """A folder that became unwritable mid-run: releasing the lock must let the run's own error
    through (and still unlock), not raise its own PermissionError in its place."""
    lock = FileLock(tmp_path / "out.chip.lock")

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))
    with pytest.raises(RuntimeError, match="the run's own error"):
        with lock.acquire():
            monkeypatch.setattr(Path, "unlink", refuse)
            raise RuntimeError("the run's own error")
    monkeypatch.undo()
    with FileLock(tmp_path / "out.chip.lock").acquire():   # unlocked: it can be taken again
        pass
