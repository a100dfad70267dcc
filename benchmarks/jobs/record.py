"""Where the whole-job timings write what they measured: ``benchmarks/results/<name>.json``, and
``<name>.md`` beside it when the job has a table to show.

One writer for every job, so each result is found in the same place in the same form, and is
printed as it is written (a long run's numbers are on the screen even if the file is lost).
Kept apart from ``benchmarks/cuda_timing.py``, which skips itself without CUDA: these jobs
measure CPU runs too."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def machine() -> dict:
    """What produced a result: the CPU's model name and whether it multiplies bfloat16 in
    hardware (a 2-core machine of this project was an AMD EPYC with AVX512-BF16 one day and
    an Intel Xeon with AMX another, and the bf16 paths' costs differ between the two), the CPUs
    the process may use, torch's threads and version, and the GPU if any."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name, "bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),
            "cpus": cpus, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_result(name: str, result: dict, markdown: str | None = None,
                 root: Path | str = RESULTS) -> Path:
    """Write ``result`` to ``<root>/<name>.json`` with the ``machine`` that made it (and
    ``markdown`` to ``<root>/<name>.md``), print the markdown, or the JSON when there is none,
    and return the JSON's path. ``name`` may name a subfolder
    (``vs_plain_loop/features_18_4096``)."""
    path = Path(root) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(result, dict) and "machine" not in result:
        result = {**result, "machine": machine()}
    text = json.dumps(result, indent=1)
    path.write_text(text + "\n")
    if markdown is not None:
        path.with_name(f"{path.stem}.md").write_text(markdown)
    print(markdown if markdown is not None else text)
    return path
