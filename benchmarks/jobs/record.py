"""Where the whole-job scripts of bench/ write what they measured (bench/results/<name>).

Kept apart from bench_helpers, which skips itself without CUDA (it serves the kernel
benchmarks): these scripts measure CPU jobs too."""
from __future__ import annotations


def save_result(name: str, result: dict) -> None:
    """Write a whole-job script's result to bench/results/<name> and print it."""
    import json
    from pathlib import Path
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
