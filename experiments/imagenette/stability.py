"""How stable a class's top channels are, and how well the sparse linear model fits, against the
number of samples, on the imagenette runs of search.py and table.py.

    python -m experiments.imagenette.stability [--work /tmp/chip_imagenette_search]

For each distillation: the held-out R^2 per class and layer (Importance.fit_quality: the fit on
folds 0..2 scored on fold 3); for pairs of seeds, the share of a class's top-10 channels (by
positive importance) that the other seed finds too; and at features.18, whose tail is global
pooling + a linear layer, the share of the top-10 that the exact infinite-sample limit has.
With fill "zero" that limit is W_fc[c] * E_photos[mean_hw A(x)] soft-thresholded at alpha * max
(docs/evaluation.md, "the last layer"), computed here from one pass over the training photos.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import chip_fast
from chip_fast.models.split import split_model

from experiments.imagenette.common import (DEEP, RESULTS, TRAIN, mobilenet_v2, top_channel_overlap,
                                           top_channels)


def class_means(model: torch.nn.Module, classes: list[int]) -> dict[int, torch.Tensor]:
    """E over each class's training photos of the spatial mean of features.18, (K,) float64."""
    source = chip_fast.ImageFolderSource(TRAIN)
    split = split_model(model, [DEEP])
    out = {}
    with torch.inference_mode():
        for c in classes:
            total = 0
            for lo in range(0, source.count(c), 64):
                x = torch.stack([source.load(c, j) for j in range(lo, min(lo + 64,
                                                                          source.count(c)))])
                total = total + split.forward(x)[0][DEEP].double().mean((2, 3)).sum(0)
            out[c] = total / source.count(c)
    return out


def limit_top10(model: torch.nn.Module, classes: list[int], alpha: float = 0.1
                ) -> dict[int, set[int]]:
    w_fc = model.classifier[1].weight.detach().double()
    tops = {}
    for c, m in class_means(model, classes).items():
        coef = w_fc[c] * m
        coef = coef.sign() * (coef.abs() - alpha * coef.abs().max()).clamp(min=0)
        vals, idx = coef.clamp(min=0).topk(10)
        tops[c] = set(idx[vals > 0].tolist())
    return tops


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.stability")
    ap.add_argument("--work", default="/tmp/chip_imagenette_search")
    ap.add_argument("--out", default=str(RESULTS / "search"))
    args = ap.parse_args()
    model = mobilenet_v2()
    runs = {p.stem: p for p in sorted(Path(args.work).glob("zero_logit_*.chip"))}
    runs.update({f"table_{p.stem}": p for p in
                 sorted((RESULTS / "table").glob("mnv2_seed*.chip"))})
    imps = {name: chip_fast.load_importance(p) for name, p in runs.items()}
    limit = limit_top10(model, next(iter(imps.values())).classes)
    rows = {}
    for name, imp in imps.items():
        r2 = imp.fit_quality()
        tops = top_channels(imp, DEEP)
        rows[name] = {"samples": imp.settings["samples_per_class"],
                      "r2_median": {l: float(v.median()) for l, v in r2.items()},
                      "top10_in_limit_features.18": sum(
                          len(tops[c] & limit[c]) / 10 for c in tops) / len(tops)}
    pairs = {"1024": ("zero_logit_1024", "zero_logit_1024_seed1"),
             "2048 (defaults)": ("table_mnv2_seed0", "table_mnv2_seed1")}
    seeds = {}
    for n, (a, b) in pairs.items():
        if a in imps and b in imps:
            seeds[n] = {l: sum(o.values()) / len(o) for l in imps[a].layers
                        for o in [top_channel_overlap(imps[a], imps[b], l)]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"runs": rows, "top10_overlap_between_seeds": seeds}
    (out / "stability.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
