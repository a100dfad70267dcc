"""One change to the library's defaults at a time, scored on the *selection* half of val-dev only
(the search's half): MobileNetV2 at its default layers on imagenette/train, seed 0, the CHIP
maps (Refined and each layer) and the held-out R^2.

    python -m experiments.imagenette.variants samples_per_class=4096 p_keep=0.75

Each argument is one variant (a DistillSettings field and its value); the defaults run too.
Distillations are cached in --work; results go to --out/table.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, evaluate

from experiments.imagenette.common import (RESULTS, TRAIN, chip_maps, distill_cached, halves,
                                           library_defaults, median_r2, mobilenet_v2, table)


def parse(variant: str) -> tuple[str, object]:
    key, _, text = variant.partition("=")
    try:
        return key, json.loads(text)
    except json.JSONDecodeError:
        return key, text


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.variants")
    ap.add_argument("variants", nargs="*", help="field=value, e.g. samples_per_class=4096")
    ap.add_argument("--out", default=str(RESULTS / "variants"))
    ap.add_argument("--work", default=str(RESULTS / "table"))
    args = ap.parse_args()
    torch.manual_seed(0)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    model = mobilenet_v2()
    layers = chip_fast.default_layers(model)
    runs, info = {}, {}
    for variant in ["defaults", *args.variants]:
        settings = library_defaults()
        if variant != "defaults":
            key, value = parse(variant)
            settings[key] = value
        name = variant.replace("=", "_").replace(".", "p")
        t0 = time.perf_counter()
        # The defaults' file is the table's seed-0 file (results/table) when present.
        path = work / ("mnv2_seed0.chip" if variant == "defaults" else f"mnv2_{name}.chip")
        imp = distill_cached(model, path, TRAIN, None, **settings, seed=0)
        runs[variant] = imp
        info[variant] = {"distill_s": time.perf_counter() - t0,
                         "held_out_r2_median": median_r2(imp)}
    methods = {}
    for variant, imp in runs.items():
        methods.update(chip_maps(imp, layers, f", {variant}"))
    result = evaluate(model, methods, halves()["selection"], out / "selection",
                      EvalSettings(faithfulness_limit=0, sanity_limit=0), plots=False)
    lines = [table({"selection": result}), "| variant | " + " | ".join(f"median held-out R² {l}" for l in layers) + " |",
              "|---" * (len(layers) + 1) + "|"]
    for v, d in info.items():
        lines.append(f"| {v} | " + " | ".join(f"{d['held_out_r2_median'][l]:.3f}"
                                              for l in layers) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "run.json").write_text(json.dumps({
        "variants": info, "command": "python -m experiments.imagenette.variants "
        + " ".join(args.variants), "device": f"CPU, {torch.get_num_threads()} threads"},
        indent=1))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
