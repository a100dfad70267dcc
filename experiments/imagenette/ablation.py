"""Does CHIP's ranking name the channels a class needs? Zero a class's top-k channels at a
layer and measure how much of its logit is lost on held-out photos, against k random channels
and the k channels ranked by mean gradient x activation (issue 21, item 3).

    python -m experiments.imagenette.ablation [--importance FILE] [--out DIR]
        [--train-photos N] [--draws D]

MobileNetV2 (../shared/data) at features.14.conv.0 and features.18. CHIP: the importance of
``distill_all_classes`` with every default on imagenette/train (default: the table's cached
``results/table/mnv2_seed0.chip``, else distilled here into ``--out``). Gradient x activation is
averaged over the first ``--train-photos`` train photos of each class (sorted names), so both
rankings come from training photos; the drops are measured on all 254 imagenette/val-dev photos.
A third ranking, gradient x activation on the val photos themselves, is a reference that has
seen the test photos (first-order, so not an upper bound either).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import chip_fast
from chip_fast.evaluation import load_val_dir
from chip_fast.evaluation.ablation import gradient_x_activation, logit_drops, ranking
from chip_fast.models.loading import preprocess_of

from experiments.imagenette.common import (DEEP, MID, RESULTS, TRAIN, VAL, distill_cached,
                                           library_defaults, mobilenet_v2)

KS = (1, 5, 20)
NAMES = ("CHIP", "gradient x activation", "random", "gradient x activation (val photos)")


def train_photos(model: torch.nn.Module, per_class: int) -> tuple[torch.Tensor, list[int]]:
    source = chip_fast.ImageFolderSource(TRAIN, preprocess=preprocess_of(model))
    items = [(c, j) for c in source.classes for j in range(min(per_class, source.count(c)))]
    return torch.stack([source.load(c, j) for c, j in items]), [c for c, _ in items]


def paired(r: dict, a: str, b: str) -> dict[int, tuple[float, float]]:
    """Per k: mean and standard error over photos of drop(a) - drop(b), photo by photo."""
    out = {}
    for k in r["ks"]:
        d = np.asarray(r["per_photo"][a][k]) - np.asarray(r["per_photo"][b][k])
        out[k] = (float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))))
    return out


def overlap(a: dict[int, list[int]], b: dict[int, list[int]], k: int) -> float:
    """Mean over classes of |top-k(a) & top-k(b)| / k."""
    return float(np.mean([len(set(a[c][:k]) & set(b[c][:k])) / k for c in a]))


def markdown(results: dict) -> str:
    lines = []
    for layer, r in results.items():
        lines += [f"**{layer}** ({r['n_images']} photos, mean own-class logit "
                  f"{r['base_logit']:.2f}; logit lost, mean ± s.e. over photos)", "",
                  "| ranking | " + " | ".join(f"top-{k}" for k in r["ks"]) + " |",
                  "|---" * (len(r["ks"]) + 1) + "|"]
        for name in NAMES:
            if name in r["drop"]:
                cells = [f"{r['drop'][name][k]:.2f} ± {r['drop_se'][name][k]:.2f}"
                         for k in r["ks"]]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        diff = r["chip_minus_gxa"]
        lines.append("| CHIP − gradient x activation (paired) | " + " | ".join(
            f"{diff[k][0]:+.2f} ± {diff[k][1]:.2f}" for k in r["ks"]) + " |")
        lines.append("| top-k shared by the two rankings (mean over classes) | " + " | ".join(
            f"{r['top_k_overlap'][k]:.2f}" for k in r["ks"]) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.ablation")
    ap.add_argument("--importance", default=str(RESULTS / "table" / "mnv2_seed0.chip"))
    ap.add_argument("--out", default=str(RESULTS / "ablation"))
    ap.add_argument("--train-photos", type=int, default=64, help="per class, gradient x activation")
    ap.add_argument("--draws", type=int, default=10, help="random k-sets per class and k")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = mobilenet_v2()
    t0 = time.perf_counter()
    path = Path(args.importance)
    imp = (chip_fast.load_importance(path) if path.is_file() else
           distill_cached(model, out / "mnv2_seed0.chip", TRAIN, None, **library_defaults()))
    imp.check_model(model)
    val = load_val_dir(VAL)
    x_val = torch.stack([val[i].image for i in range(len(val))])
    x_train, y_train = train_photos(model, args.train_photos)
    results = {}
    for layer in (MID, DEEP):
        chip = {c: imp.weights[layer][c] for c in imp.classes}
        rankings = {"CHIP": ranking(chip),
                    "gradient x activation": ranking(
                        gradient_x_activation(model, layer, x_train, y_train)),
                    "gradient x activation (val photos)": ranking(
                        gradient_x_activation(model, layer, x_val, val.labels))}
        r = logit_drops(model, layer, x_val, val.labels, rankings, ks=KS,
                        random_draws=args.draws)
        r["chip_minus_gxa"] = paired(r, "CHIP", "gradient x activation")
        r["top_k_overlap"] = {k: overlap(rankings["CHIP"], rankings["gradient x activation"], k)
                              for k in KS}
        results[layer] = r
    meta = {"importance": str(path), "importance_settings": imp.settings,
            "train_photos_per_class": args.train_photos, "random_draws": args.draws,
            "seconds": time.perf_counter() - t0,
            "device": f"CPU, {torch.get_num_threads()} threads"}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                                  default=str))
    (out / "ablation.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
