"""The paper's setting: CHIP distilled from 300 photos per class (imagenette/train) against the
peers, on both halves of imagenette/val-dev, in one command.

    python -m experiments.imagenette.table [--arch mobilenet_v2|efficientnet_lite0|1|2]
        [--out experiments/imagenette/results/table] [--samples N] [--seeds N]
        [--faithfulness N] [--sanity N] [--halves selection,confirmation]

MobileNetV2 (../shared/data) or EfficientNet-Lite0, 1 or 2 (their pip packages' real weights;
the photos, train and val-dev, read with their own [-1, 1] preprocessing at their own size),
CHIP exactly as
``distill_all_classes`` + ``explain`` give it with their defaults (default layers, Refined CHIP,
every DistillSettings default), seed 0, on imagenette/train; each layer's CHIP map beside it.
Peers (CAM, and pytorch-grad-cam's Grad-CAM, Grad-CAM++, Layer-CAM) at the last layer
(features.18; Lite0 features.8) and at every layer CHIP uses, and pytorch-grad-cam's RefineCAM
(Grad-CAM++ and Layer-CAM bases: the product of the per-layer maps, Refined CHIP's rule) over
CHIP's layers. MaxBoxAccV2 is clovaai/wsolevaluation's. Scored by chip_fast.evaluation on the
selection half (even-indexed val-dev photos in sorted order, where the defaults were chosen:
experiments/imagenette/search.py) and on the confirmation half (odd): box metrics on every photo,
deletion/insertion AUC on the first ``--faithfulness`` photos of a half and the
model-randomisation sanity check (Spearman rho of each map before and after the top 4 blocks
are re-initialised; lower means the map depends more on the weights) on the first
``--sanity``: CHIP's maps of the randomised copy come from an importance distilled again from
it, on the same photos with the same settings (the method's whole path, as a gradient peer
runs its whole path on the copy). Also written: the held-out R^2 of the sparse linear model per class and layer,
and, with --seeds 2, how many of a class's top-10 channels a second seed finds again.
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
from chip_fast.evaluation.sanity import Redistill

from experiments.imagenette.compare import REFERENCE, write_comparisons
from experiments.imagenette.common import (ARCHS, BOX_COLUMNS, RESULTS, TAGS, TRAIN,
                                           arch_setup, chip_maps, distill_cached, halves,
                                           library_defaults, peers_at, table,
                                           top_channel_overlap)

COLUMNS = BOX_COLUMNS[:2] + (("MaxBoxAccV2", "max_box_acc_v2"),) + BOX_COLUMNS[2:] + (
    ("deletion ↓", "deletion_auc"), ("insertion ↑", "insertion_auc"),
    ("sanity ρ ↓", "sanity_spearman"), ("ms/image", "ms_per_image"))
# The layer feeding the global pooling: CAM's layer, and the last-layer peers'.
LAST = {"mobilenet_v2": "features.18", "efficientnet_lite0": "features.8",
        "efficientnet_lite1": "features.8", "efficientnet_lite2": "features.8"}


def methods_for(imp: chip_fast.Importance, layers: list[str], last: str = LAST[ARCHS[0]],
                redistill: Redistill | None = None) -> dict:
    methods = chip_maps(imp, layers, refined=REFERENCE, redistill=redistill)
    peers = peers_at(list(dict.fromkeys([last] + layers)), last)
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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.table")
    ap.add_argument("--arch", choices=ARCHS, default=ARCHS[0])
    ap.add_argument("--out", default=str(RESULTS / "table"))
    ap.add_argument("--samples", type=int, help="samples per class (default: the library's)")
    ap.add_argument("--seeds", type=int, default=2, help="distillations for the stability check")
    ap.add_argument("--faithfulness", type=int, default=32, help="photos per half with "
                                                                 "deletion/insertion")
    ap.add_argument("--sanity", type=int, default=0, help="photos per half with the "
                                                          "model-randomisation sanity check")
    ap.add_argument("--only", help="score only the methods whose names start with one of "
                                   "these (comma list, e.g. 'CHIP,Refined CHIP'; default all)")
    ap.add_argument("--halves", default="selection,confirmation",
                    help="which halves of val-dev to score (comma list)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, val, preprocess = arch_setup(args.arch)
    layers = chip_fast.default_layers(model)
    extra = library_defaults()
    if args.samples is not None:
        extra["samples_per_class"] = args.samples
    t0 = time.perf_counter()
    imps = [distill_cached(model, out / f"{TAGS[args.arch]}_seed{s}.chip", TRAIN, None,
                           preprocess=preprocess, **{**extra, "seed": s})
            for s in range(args.seeds)]
    distill_s = time.perf_counter() - t0
    results, t1 = {}, time.perf_counter()
    wanted = [h.strip() for h in args.halves.split(",") if h.strip()]
    # the sanity check distils the randomised copy again, from the same photos, as imps[0] was
    redistill = (Redistill(imps[0], chip_fast.ImageFolderSource(TRAIN, preprocess=preprocess))
                 if args.sanity else None)
    methods = methods_for(imps[0], layers, LAST[args.arch], redistill)
    if args.only:
        keep = tuple(p.strip() for p in args.only.split(",") if p.strip())
        methods = {k: v for k, v in methods.items() if k.startswith(keep)}
        if not methods:
            raise SystemExit(f"--only {args.only}: no method's name starts so")
    for name, half in ((n, h) for n, h in halves(val).items() if n in wanted):
        results[name] = evaluate(model, methods, half, out / name,
                                 EvalSettings(faithfulness_limit=args.faithfulness,
                                              sanity_limit=args.sanity), plots=False)
    fit = {l: [round(float(v), 4) for v in r] for l, r in imps[0].fit_quality().items()}
    stable = ({l: top_channel_overlap(imps[0], imps[1], l) for l in layers}
              if len(imps) > 1 else {})
    meta = {"arch": args.arch, "layers": layers, "settings": imps[0].settings,
            "distill_s": distill_s, "distillations": len(imps),
            "evaluate_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0,
            "faithfulness_images": args.faithfulness, "sanity_images": args.sanity,
            "sanity_randomized_blocks": next(iter(results.values()), {}).get(
                "sanity_randomized_blocks", []),
            "held_out_r2": fit,
            "top10_overlap_seed0_seed1": {l: {str(c): v for c, v in d.items()}
                                          for l, d in stable.items()},
            "classes": imps[0].classes, "device": f"CPU, {torch.get_num_threads()} threads"}
    (out / "run.json").write_text(json.dumps(meta, indent=1, default=str))
    (out / "table.md").write_text(table(results, COLUMNS))
    if REFERENCE in methods:
        write_comparisons(out, results)
    print(json.dumps({k: meta[k] for k in ("layers", "distill_s", "evaluate_s", "total_s")}))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
