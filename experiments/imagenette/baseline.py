"""The per-view baseline (``baseline="view"``) against the raw response, in the paper's setting:
MobileNetV2 at its default layers, distilled on imagenette/train (300 photos per class) with
the library's other defaults, two seeds each; the fit (held-out R^2), the stability of each
class's top-10 channels across the seeds, and the CHIP maps scored on both halves of val-dev
(the decision is read on the selection half).

    python -m experiments.imagenette.baseline [--out experiments/imagenette/results/baseline]

Distillations are cached as .chip files in --work (``mnv2_<baseline>_seed<s>.chip``), so a
rerun only scores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, evaluate

from experiments.imagenette.common import (RESULTS, TRAIN, chip_maps, distill_cached, halves,
                                           library_defaults, median_r2, mobilenet_v2, table,
                                           top_channel_overlap)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.baseline")
    ap.add_argument("--out", default=str(RESULTS / "baseline"))
    ap.add_argument("--work", default=str(RESULTS / "table"))
    args = ap.parse_args()
    torch.manual_seed(0)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    model = mobilenet_v2()
    layers = chip_fast.default_layers(model)
    extra = {k: v for k, v in library_defaults().items() if k != "baseline"}
    runs, seconds = {}, {}
    for baseline in ("none", "view"):
        t0 = time.perf_counter()
        name = f"mnv2_{baseline}_seed{{}}.chip"
        runs[baseline] = [distill_cached(model, work / name.format(s), TRAIN, None,
                                         **{**extra, "seed": s, "baseline": baseline})
                          for s in (0, 1)]
        seconds[baseline] = time.perf_counter() - t0
    fit = {b: median_r2(imps[0]) for b, imps in runs.items()}
    stable = {b: {l: statistics.mean(top_channel_overlap(imps[0], imps[1], l).values())
                  for l in layers} for b, imps in runs.items()}
    methods = {}
    for b, imps in runs.items():
        methods.update(chip_maps(imps[0], layers, f", baseline {b}"))
    scores = {}
    for half_name, half in halves().items():
        scores[half_name] = evaluate(model, methods, half, out / half_name,
                                     EvalSettings(faithfulness_limit=0, sanity_limit=0),
                                     plots=False)
    lines = [table(scores), "| baseline | " + " | ".join(f"median held-out R² {l}" for l in layers)
              + " | " + " | ".join(f"top-10 stability {l}" for l in layers) + " |",
              "|---" * (2 * len(layers) + 1) + "|"]
    for b in runs:
        lines.append(f"| {b} | " + " | ".join(f"{fit[b][l]:.3f}" for l in layers) + " | "
                     + " | ".join(f"{stable[b][l]:.2f}" for l in layers) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "run.json").write_text(json.dumps({
        "layers": layers, "distill_s": seconds, "held_out_r2_median": fit,
        "top10_stability": stable, "settings": runs["view"][0].settings,
        "command": "python -m experiments.imagenette.baseline",
        "device": f"CPU, {torch.get_num_threads()} threads"}, indent=1, default=str))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
