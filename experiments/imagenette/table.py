"""The paper's setting: CHIP distilled from 300 photos per class (imagenette/train) against the
peers, on both halves of imagenette/val-dev, in one command.

    python -m experiments.imagenette.table [--out experiments/imagenette/results/table]
        [--samples N] [--seeds N] [--halves selection,confirmation]

MobileNetV2 (../shared/data), CHIP exactly as ``distill_all_classes`` + ``explain`` give it
with their defaults (default layers, Refined CHIP, every DistillSettings default), seed 0,
on imagenette/train; each layer's CHIP map beside it. Peers (CAM, and pytorch-grad-cam's
Grad-CAM, Grad-CAM++, Layer-CAM) at features.18 and at every layer CHIP uses, and
pytorch-grad-cam's RefineCAM (Grad-CAM++ and Layer-CAM bases: the product of the per-layer maps,
Refined CHIP's rule) over CHIP's layers. MaxBoxAccV2 is clovaai/wsolevaluation's. Scored by
chip_fast.evaluation on the selection half (even-indexed val-dev photos in sorted order, where
the defaults were chosen: experiments/imagenette/search.py) and on the confirmation half (odd). Also
written: the held-out R^2 of the sparse linear model per class and layer, and, with --seeds 2,
how many of a class's top-10 channels a second seed finds again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, evaluate
from chip_fast.evaluation.peers import peer

from experiments.imagenette.common import (BOX_COLUMNS, DEEP, RESULTS, TRAIN, chip_maps,
                                           distill_cached, halves, library_defaults, mobilenet_v2,
                                           peers_at, table, top_channel_overlap)

COLUMNS = BOX_COLUMNS[:2] + (("MaxBoxAccV2", "max_box_acc_v2"),) + BOX_COLUMNS[2:] + (
    ("deletion ↓", "deletion_auc"), ("insertion ↑", "insertion_auc"), ("ms/image", "ms_per_image"))


def methods_for(imp: chip_fast.Importance, layers: list[str]) -> dict:
    methods = chip_maps(imp, layers, refined="Refined CHIP (defaults)")
    peers = peers_at(list(dict.fromkeys([DEEP] + layers)))
    names = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++",
             "layercam": "Layer-CAM"}
    for key, fn in peers.items():
        method, layer = key.split("@")
        methods[f"{names[method]} @ {layer}"] = fn
    if len(layers) > 1:   # RefineCAM: Refined CHIP's product rule over the same layers
        for base in ("gradcam++", "layercam"):
            methods[f"RefineCAM ({names[base]}) @ {' + '.join(layers)}"] = peer(
                f"{base}-refined", layers)
    return methods


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.table")
    ap.add_argument("--out", default=str(RESULTS / "table"))
    ap.add_argument("--samples", type=int, help="samples per class (default: the library's)")
    ap.add_argument("--seeds", type=int, default=2, help="distillations for the stability check")
    ap.add_argument("--faithfulness", type=int, default=32, help="photos per half with "
                                                                 "deletion/insertion")
    ap.add_argument("--halves", default="selection,confirmation",
                    help="which halves of val-dev to score (comma list)")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = mobilenet_v2()
    layers = chip_fast.default_layers(model)
    extra = library_defaults()
    if args.samples is not None:
        extra["samples_per_class"] = args.samples
    t0 = time.perf_counter()
    imps = [distill_cached(model, out / f"mnv2_seed{s}.chip", TRAIN, None,
                           **{**extra, "seed": s})
            for s in range(args.seeds)]
    distill_s = time.perf_counter() - t0
    results, t1 = {}, time.perf_counter()
    wanted = [h.strip() for h in args.halves.split(",") if h.strip()]
    for name, half in ((n, h) for n, h in halves().items() if n in wanted):
        results[name] = evaluate(model, methods_for(imps[0], layers), half, out / name,
                                 EvalSettings(faithfulness_limit=args.faithfulness,
                                              sanity_limit=0), plots=False)
    fit = {l: [round(float(v), 4) for v in r] for l, r in imps[0].fit_quality().items()}
    stable = ({l: top_channel_overlap(imps[0], imps[1], l) for l in layers}
              if len(imps) > 1 else {})
    meta = {"layers": layers, "settings": imps[0].settings, "distill_s": distill_s,
            "distillations": len(imps), "evaluate_s": time.perf_counter() - t1,
            "total_s": time.perf_counter() - t0, "held_out_r2": fit,
            "top10_overlap_seed0_seed1": {l: {str(c): v for c, v in d.items()}
                                          for l, d in stable.items()},
            "classes": imps[0].classes, "device": f"CPU, {torch.get_num_threads()} threads"}
    (out / "run.json").write_text(json.dumps(meta, indent=1, default=str))
    (out / "table.md").write_text(table(results, COLUMNS))
    print(json.dumps({k: meta[k] for k in ("layers", "distill_s", "evaluate_s", "total_s")}))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
