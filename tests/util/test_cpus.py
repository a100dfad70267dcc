"""``chip_fast.util.cpus``: thread pools sized from the CPUs the process may use, not the machine's
count."""
from __future__ import annotations

import os

from chip_fast.util import cpus


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpus.cgroup_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cpus.cgroup_quota(tmp_path) is None


def test_usable_cpus_is_the_smaller_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: 1.5)
    cpus.usable_cpus.cache_clear()
    try:
        assert cpus.usable_cpus() == 1
        monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
        cpus.usable_cpus.cache_clear()
        assert cpus.usable_cpus() == 4
    finally:
        cpus.usable_cpus.cache_clear()
