"""Progress lines of runs whose steps are few and slow (explain's images, evaluate's batches).

Owns the wording and the estimate of the time left. A line per step, not a redrawn bar: these
steps take seconds to minutes, and a line shows in logs and pipes as well as in a terminal.
Distillation's many small units use tqdm instead (``chip_fast.distill.job``).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """``p = Progress(64, "images"); p.step("photo.jpg done")`` writes
    ``[3/64 images, 4 s, ETA 1 min 21 s] photo.jpg done``. The estimate is the mean time per
    item so far times the items left."""

    def __init__(self, total: int, unit: str = "items", *,
                 write: Callable[[str], None] | None = None, stream: TextIO | None = None) -> None:
        self.total, self.unit, self.done = total, unit, 0
        self.started = time.monotonic()
        target = stream if stream is not None else sys.stderr
        self.write = write or (lambda line: print(line, file=target, flush=True))

    def eta(self) -> float | None:
        if not self.done:
            return None
        return (time.monotonic() - self.started) / self.done * max(0, self.total - self.done)

    def step(self, message: str = "", items: int = 1) -> None:
        self.done += items
        elapsed = time.monotonic() - self.started
        eta = self.eta()
        left = "" if eta is None or self.done >= self.total else f", ETA {duration(eta)}"
        head = f"[{self.done}/{self.total} {self.unit}, {duration(elapsed)}{left}]"
        self.write(f"{head} {message}".rstrip())
