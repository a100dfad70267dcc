"""Exclusive locks on what a run writes, so two runs never write the same file or folder.

Owns the lock files: ``<path>.lock`` next to the path it guards (an output file, a checkpoint
folder), held with an OS lock for the whole run. The operating system drops the lock when the
process ends, however it ends (a crash, ``kill -9``, a lost node), so a stale lock cannot exist
by construction and nothing has to be cleaned up by hand. The file records who holds it (pid,
host, start time, command), so the run that is refused can name the one that holds it.

Platforms: Linux and macOS use ``fcntl.flock``; Windows uses ``msvcrt.locking`` on one byte of
the file (also dropped by the system when the process ends). Where neither exists, a warning
says that concurrent runs are not detected, and the run goes on unlocked. On network file
systems the lock is as good as the file system's own locking (NFS v4: yes).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:   # Windows
    fcntl = None      # type: ignore[assignment]
try:
    import msvcrt
except ImportError:   # Linux, macOS
    msvcrt = None     # type: ignore[assignment]

# Windows locks byte ranges and refuses reads of a locked range: lock a byte far past the
# holder's record, so a refused run can still read who holds the lock.
_WINDOWS_LOCK_OFFSET = 1 << 30


# Locks this process holds, by lock file: taking one again nests (the command line locks before it
# reads the data, then distill_all_classes locks the same paths), it does not refuse itself.
_HELD: dict[Path, list] = {}   # lock file -> [open file or None, holders]


class LockedError(RuntimeError):
    """Another run holds the lock of a path this run would write."""


def lock_path(path: str | Path) -> Path:
    """The lock file of ``path``: ``<path>.lock`` in the same folder (never inside a folder that
    the run may delete)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _try_lock(fd: int) -> bool:
    """Take the OS lock on ``fd`` without waiting; False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv)[:300]}


def describe_holder(path: Path) -> str:
    """Who holds the lock file ``path``, in words, from the record its holder wrote."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {record['pid']} on host {record['host']}, started {record['started']}, "
                f"command: {record['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not written yet"


class FileLock:
    """The lock of one path, for one run: ``with FileLock(out, "output"): ...``.

    ``acquire`` fails at once with LockedError, naming the holder; it never waits, since a
    second run writing the same output is a mistake to report, not a queue to join. Within one
    process the lock nests: the OS lock is taken by the first holder and let go by the last."""

    def __init__(self, path: str | Path, what: str = "output") -> None:
        self.guarded = Path(path)
        self.path = lock_path(path)
        self.what = what
        self.held = False

    def acquire(self) -> "FileLock":
        if self.held:
            return self
        key = self.path.resolve()
        if key not in _HELD:
            _HELD[key] = [self._take(), 0]
        _HELD[key][1] += 1
        self.held = True
        return self

    def _take(self) -> int | None:
        """The OS lock: the open file it is held on (None where there is no locking)."""
        if fcntl is None and msvcrt is None:
            warnings.warn(f"no file locking on this platform: another run writing "
                          f"{self.guarded} at the same time would not be detected", stacklevel=3)
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                os.close(fd)
                raise LockedError(
                    f"{self.guarded} is in use by another chip-fast run ({describe_holder(self.path)})"
                    f": wait for it to finish or choose another {self.what}. The lock "
                    f"({self.path}) is released by the system when that process ends.")
            # The previous holder removes the file when it lets go: if it did so after we opened
            # the file, we hold a lock on a file that no longer has the name; take the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            _unlock(fd)
            os.close(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(_holder_record()).encode())
        return fd

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = self.path.resolve()
        _HELD[key][1] -= 1
        if _HELD[key][1]:
            return
        fd = _HELD.pop(key)[0]
        if fd is None:
            return
        try:
            if fcntl is not None:
                # Removed while still held, so no other run can lock this name's old file after
                # us. A folder that became unwritable leaves the file behind: harmless (an
                # unheld lock file is stale and ignored), and the error that ended the run must
                # not be replaced by this one.
                with contextlib.suppress(OSError):
                    self.path.unlink()
        finally:
            _unlock(fd)
            os.close(fd)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(*paths: tuple[str | Path | None, str]) -> Iterator[list[FileLock]]:
    """Hold the locks of several ``(path, what)`` pairs (None paths are skipped), all or none:
    a refused lock releases the ones taken before it."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(FileLock(p, what)) for p, what in paths if p is not None]
