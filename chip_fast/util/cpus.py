"""How many CPUs this process may really use: the size of its thread pools.

``os.cpu_count()`` counts the machine's CPUs, not those a process may run on: a CPU affinity mask
(taskset, Slurm) or a cgroup CPU quota (containers) gives fewer, and sizing pools from the
machine's count oversubscribes them (threads that wait on each other in turn). Owns that
number; the pools themselves belong to their users.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), None if unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


@functools.cache
def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # macOS and Windows have no affinity call
        n = os.cpu_count() or 1
    quota = cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)
