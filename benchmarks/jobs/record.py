"""Where the whole-job timings write what they measured: ``benchmarks/results/<name>.json``, and
``<name>.md`` beside it when the job has a table to show.

One writer for every job, so each result is found in the same place in the same form, and is
printed as it is written (a long run's numbers are on the screen even if the file is lost).
Kept apart from ``benchmarks/cuda_timing.py``, which skips itself without CUDA: these jobs
measure CPU runs too."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def write_result(name: str, result: dict, markdown: str | None = None,
                 root: Path | str = RESULTS) -> Path:
    """Write ``result`` to ``<root>/<name>.json`` (and ``markdown`` to ``<root>/<name>.md``),
    print the markdown, or the JSON when there is none, and return the JSON's path. ``name``
    may name a subfolder (``vs_plain_loop/features_18_4096``)."""
    path = Path(root) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    path.write_text(text + "\n")
    if markdown is not None:
        path.with_name(f"{path.stem}.md").write_text(markdown)
    print(markdown if markdown is not None else text)
    return path
