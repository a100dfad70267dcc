"""The scripts of benchmarks/jobs, tools/ and experiments/ still import against the package,
and a whole-job result records the machine that made it.

They reach into chip_fast's internals in places (listed in each import block), and those names
move; a script that no longer imports would otherwise go unnoticed until someone runs it.
Imported in a fresh process from the repository root, as ``python -m`` runs them: importing
tools.compile_check unsets TRITON_INTERPRET, which this process's kernel tests rely on."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script_modules() -> list[str]:
    mods = [f"benchmarks.jobs.{p.stem}" for p in (ROOT / "benchmarks" / "jobs").glob("*.py")
            if p.stem != "__init__"]
    # compile_check needs Triton: tests/kernels/test_compile.py
    mods += [f"tools.{p.stem}" for p in (ROOT / "tools").glob("*.py")
             if p.stem not in ("__init__", "compile_check")]
    for study in sorted(p for p in (ROOT / "experiments").iterdir() if (p / "README.md").is_file()):
        mods += [f"experiments.{study.name}.{p.stem}" for p in sorted(study.glob("*.py"))]
    return mods


@pytest.mark.slow   # one process that imports torch, torchvision and the evaluation's peers
def test_every_script_imports():
    pytest.importorskip("pytorch_grad_cam", reason="experiments need chip-fast[eval]")
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    proc = subprocess.run([sys.executable, "-c", code, *script_modules()], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_job_is_listed():
    # Loaded from its file: the repository root need not be on this process's sys.path.
    path = ROOT / "benchmarks" / "jobs" / "__main__.py"
    spec = importlib.util.spec_from_file_location("benchmarks_jobs_main", path)
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    files = {p.stem for p in path.parent.glob("*.py")}
    assert set(entry.JOBS) == files - {"__init__", "__main__", "record", "imagenette"}


def test_a_result_records_the_machine_that_made_it(tmp_path):
    from benchmarks.jobs.record import write_result
    path = write_result("sub/r", {"seconds": 1.0}, "| a |\n", root=tmp_path)
    got = json.loads(path.read_text())
    assert got["seconds"] == 1.0 and (tmp_path / "sub" / "r.md").read_text() == "| a |\n"
    assert got["machine"]["cpu"] and got["machine"]["cpus"] >= 1
    assert set(got["machine"]["bf16"]) <= {"avx512_bf16", "amx_bf16"}
    kept = write_result("s", {"machine": {"cpu": "as given"}}, root=tmp_path)
    assert json.loads(kept.read_text())["machine"] == {"cpu": "as given"}
