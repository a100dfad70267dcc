"""Refined CHIP (explain's defaults) of given MobileNetV2 importance files, scored on one half
of imagenette/val-dev: does a stabler importance (more samples, or distilled until stable) make
better maps?

    python -m experiments.imagenette.score_files --half selection --out NAME FILE.chip [...]
        [--until-stable 0,1]

``--until-stable SEEDS`` adds, per seed, MobileNetV2 distilled with every library default but
``until_stable=0.95`` and a cap of 16,384 samples per class; ``--defaults SEEDS`` adds it
distilled with every library default, or with ``--control`` besides (both cached in the results
folder, the defaults' files named by their control variate).

Writes ``results/score_files/NAME_<half>.json``: per file its settings and GT-known@0.2,
MaxBoxAcc, MaxBoxAccV2, top-1 loc err.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import chip_fast
from chip_fast.evaluation import load_val_dir

from experiments.imagenette.common import (DEEP, MID, RESULTS, TRAIN, VAL, Half, distill_cached,
                                           library_defaults, mobilenet_v2)
from experiments.imagenette.maps_search import Photos
from experiments.imagenette.third_layer import KEYS, chip_scores

OUT = RESULTS / "score_files"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.score_files")
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--until-stable", default="", help="seeds to distil until stable, e.g. 0,1")
    ap.add_argument("--defaults", default="", help="seeds to distil with every default, e.g. 0,1")
    ap.add_argument("--control", choices=["none", "view_slopes"],
                    help="--defaults with this control variate (default: the library's)")
    ap.add_argument("--half", default="selection", choices=["selection", "confirmation"])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model = mobilenet_v2()
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in (int(x) for x in args.until_stable.split(",") if x):
        path = OUT / f"mnv2_until_stable_0.95_seed{seed}.chip"
        distill_cached(model, path, TRAIN, None, **(library_defaults() | {
            "samples_per_class": 16384}), until_stable=0.95, seed=seed)
        args.files.append(path)
    defaults = library_defaults() | ({"control": args.control} if args.control else {})
    for seed in (int(x) for x in args.defaults.split(",") if x):
        path = OUT / f"mnv2_defaults_{defaults['control']}_seed{seed}.chip"
        distill_cached(model, path, TRAIN, None, **defaults, seed=seed)
        args.files.append(path)
    imps = {f: chip_fast.load_importance(f) for f in args.files}
    layers = [MID, DEEP]  # the default layers; a file may hold more (third_layer's)
    photos = Photos(model, Half(load_val_dir(VAL), 0 if args.half == "selection" else 1), layers)
    results = {}
    for f, imp in imps.items():
        settings = {k: imp.settings.get(k) for k in ("samples_per_class", "masks", "estimators",
                                                     "seed", "until_stable", "tail_dtype",
                                                     "controls")}
        scores = chip_scores(model, photos, imp, layers, None)
        results[f.name] = {"settings": settings, "scores": scores}
        print(f"{f.name:40s} " + " / ".join(f"{scores[k]:.3f}" for k in KEYS), flush=True)
    (OUT / f"{args.out}_{args.half}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
