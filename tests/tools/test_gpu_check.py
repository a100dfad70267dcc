"""The GPU script (tools/gpu_check.sh) runs end to end on a CPU (GPU_CHECK_DEVICE=cpu) from a
bare copy of the tree, as a GPU machine receives it: a ``git archive`` of the working tree, a
Python that has the dependencies but not chip_fast, and no package index. The plumbing is
tested here, before any GPU minute is spent.

The environment without chip_fast: a venv without pip and without the system site-packages,
whose one ``.pth`` file names this interpreter's site-packages folders. Those folders' own
``.pth`` files are not read from a path line (only site directories' are), so the editable
install of chip_fast (its ``__editable__`` finder is set up by such a file) is invisible there,
while torch, triton, pip and setuptools import. The test checks that ``import chip_fast`` fails
in it before the script runs.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["setup", "kernel_tests", "ceilings", "correctness", "launches", "overhead", "affine",
         "plain", "vgg", "decode", "torchrun", "kernel_bench", "peers", "demo"]


def bare_copy(dest: Path) -> None:
    """The working tree's tracked files as ``git archive`` writes them (uncommitted changes
    included, through ``git stash create``)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no git archive to make")
    stash = subprocess.run(["git", "stash", "create"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    archive = dest.parent / "tree.tar"
    subprocess.run(["git", "archive", "-o", str(archive), stash or "HEAD"], cwd=ROOT,
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")


def python_without_chip_fast(venv: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE
                                     else [])
    Path(purelib, "deps.pth").write_text("\n".join(d for d in dirs if Path(d).is_dir()) + "\n")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TRITON_INTERPRET", "CHIP_FAST_BACKEND", "OUT",
                        "GPU_CHECK_STEPS", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONNOUSERSITE="1", **extra)
    return env


# The script's budget is the GPU machine's; on a CPU the same steps take 200-220 s, and on a
# slower or busier CI machine a step that starts late times out where it should have had room
# (CI failed so twice): the dry run gets more, the same steps, and still a bound of its own.
DRY_RUN_BUDGET = 360


@pytest.mark.slow   # the whole script on a CPU: three to four minutes on two cores
def test_dry_run_from_a_bare_copy_passes_every_step(tmp_path):
    copy, out = tmp_path / "copy", tmp_path / "out"
    bare_copy(copy)
    python = python_without_chip_fast(tmp_path / "venv")
    probe = subprocess.run([str(python), "-c", "import chip_fast"], cwd=tmp_path,
                           capture_output=True, text=True, env=clean_env())
    if probe.returncode == 0:
        pytest.skip("chip_fast is installed into this interpreter's site-packages itself, not "
                    "as an editable finder: no environment without it can be made from it")
    assert "No module named 'chip_fast'" in probe.stderr
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=copy, capture_output=True,
                          text=True, timeout=DRY_RUN_BUDGET + 120,
                          env=clean_env(GPU_CHECK_DEVICE="cpu", PIP_NO_INDEX="1",
                                        GPU_CHECK_BUDGET=str(DRY_RUN_BUDGET),
                                        OUT=str(out), PYTHON=str(python)))
    wall = time.monotonic() - t0
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    assert wall < DRY_RUN_BUDGET + 30, f"the dry run took {wall:.0f} s:\n{proc.stdout}"
    lines = [l for l in proc.stdout.splitlines() if l.startswith("STEP ")]
    assert [l.split(":")[0][5:] for l in lines] == STEPS, proc.stdout
    for line in lines:
        status = line.split(": ", 1)[1].split(" ")[0]
        assert status in ("ok", "skip"), line
    assert "chip_fast via pip install -e" in lines[0]
    assert " kernel_bench: skip (" in proc.stdout   # pytest-benchmark timings need CUDA
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, files
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["device"].startswith("cpu: ") and summary["torch"]
    assert set(summary["steps"]) == set(STEPS)
    assert all(summary["steps"][s]["line"] in lines for s in STEPS)
    assert summary["targets"] and all({"target", "measured", "goal", "met"} <= set(t)
                                      for t in summary["targets"])
    engine = json.loads((out / "engine.json").read_text())
    assert engine["parts"]["correctness"]["checks"]
    done = subprocess.run([str(python), "-c", "import chip_fast; print(chip_fast.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, env=clean_env())
    assert Path(done.stdout.strip()).resolve().is_relative_to(copy.resolve()), done


def test_a_rerun_of_named_steps_merges_into_the_results(tmp_path):
    """GPU_CHECK_STEPS=... runs setup and the named steps only, and an earlier run's lines
    stay in gpu_check.json."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "gpu_check.json").write_text(json.dumps(
        {"steps": {"vgg": {"status": "ok", "seconds": 9, "line": "STEP vgg: ok (earlier)"}}}))
    proc = subprocess.run(["bash", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=clean_env(GPU_CHECK_DEVICE="cpu", OUT=str(out),
                                        GPU_CHECK_STEPS="ceilings", PYTHON=sys.executable,
                                        PYTHONPATH=str(ROOT)))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("STEP ")]
    assert [l.split(":")[0] for l in lines] == ["STEP setup", "STEP ceilings"], proc.stdout
    assert proc.returncode == 0, proc.stdout
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps["vgg"]["line"] == "STEP vgg: ok (earlier)"
    assert steps["ceilings"]["status"] == "ok"
