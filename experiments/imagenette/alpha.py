"""Issue 21 item 2 and issue 19's "separate decision": the Lasso's alpha, on the maps and on
the seeds' agreement, from the statistics of the same two distillations (``refit``).

    python -m experiments.imagenette.alpha --half selection [--alphas 0.1,0.03,0.01]

The importances are third_layer.py's (MobileNetV2, every library default, seeds 0 and 1; the
default layers are two of its three); each alpha is a refit of their sums, so the alphas differ
in the penalty alone. Per alpha: Refined CHIP at the default layers with explain's defaults,
scored on one half, and the two seeds' median r / top-10 overlap per layer.
"""
from __future__ import annotations

import argparse
import json

from benchmarks.jobs.stability import agreement
from chip_fast.evaluation import load_val_dir

from experiments.imagenette.common import DEEP, MID, VAL, Half, mobilenet_v2
from experiments.imagenette.maps_search import Photos
from experiments.imagenette.third_layer import KEYS, OUT, chip_scores, importance


def seed_agreement(a, b, layer: str) -> dict:
    """The stability benchmark's measure (median r, top-10 overlap by |W|) and the mean number
    of non-zero weights per class."""
    wa = a.weights[layer]
    return agreement(wa, b.weights[layer], a.classes) | {
        "nonzero": float((wa[a.classes] != 0).float().sum(1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.alpha")
    ap.add_argument("--half", default="selection", choices=["selection", "confirmation"])
    ap.add_argument("--alphas", default="0.1,0.03,0.01")
    args = ap.parse_args()
    model = mobilenet_v2()
    base = {s: importance(model, s) for s in (0, 1)}
    photos = Photos(model, Half(load_val_dir(VAL), 0 if args.half == "selection" else 1),
                    [MID, DEEP])
    results = {}
    for alpha in (float(a) for a in args.alphas.split(",")):
        imps = {s: imp if alpha == imp.settings["alpha"] else imp.refit(alpha)
                for s, imp in base.items()}
        maps = {str(s): chip_scores(model, photos, imp, [MID, DEEP], None)
                for s, imp in imps.items()}
        seeds = {l: seed_agreement(imps[0], imps[1], l) for l in (MID, DEEP)}
        results[str(alpha)] = {"maps": maps, "seeds": seeds}
        print(f"alpha {alpha}: " + "  ".join(" / ".join(f"{r[k]:.3f}" for k in KEYS)
                                             for r in maps.values())
              + f"  seeds {MID} r {seeds[MID]['median_r']:.3f} top-10 {seeds[MID]['top10']:.2f}",
              flush=True)
    (OUT / f"alpha_{args.half}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
