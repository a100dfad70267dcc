"""Scoring for the imagenette search: localization of CHIP maps (per layer, and every
candidate way of combining the layers) and of the peers, on one half of val-dev, from the
metrics of chip_fast.evaluation. Used by search.py (``score``)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import chip_fast
from chip_fast.evaluation import metrics as M
from experiments.imagenette.common import (DEEP, MID, halves, mobilenet_v2, peers_at,
                                           top_channel_overlap)

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _norm(m: torch.Tensor) -> torch.Tensor:
    lo = m.flatten(1).amin(1)[:, None, None]
    hi = m.flatten(1).amax(1)[:, None, None]
    return (m - lo) / (hi - lo).clamp(min=1e-12)


# Candidate combinations of the normalised mid (14x14) map m and deep (7x7) map d.
COMBINE: dict[str, Combine] = {
    "deep only": lambda m, d: d,
    "mid only": lambda m, d: m,
    "product": lambda m, d: _norm(m * d),
    "geometric mean": lambda m, d: _norm((m * d).sqrt()),
    "deep^0.75 mid^0.25": lambda m, d: _norm(d ** 0.75 * m ** 0.25),
    "deep^0.9 mid^0.1": lambda m, d: _norm(d ** 0.9 * m ** 0.1),
    "mean": lambda m, d: _norm(m + d),
    "mid gated by deep>0.2": lambda m, d: _norm(m * (d > 0.2)),
    "mid gated by deep>0.5": lambda m, d: _norm(m * (d > 0.5)),
}


BASIC = ("deep only", "mid only", "product")


class Half:
    """One half of val-dev in memory: images, labels, boxes, whether the model is right."""

    def __init__(self, model: torch.nn.Module, data) -> None:
        items = [data[i] for i in range(len(data))]
        self.x = torch.stack([s.image for s in items])
        self.labels = [s.label for s in items]
        self.boxes = [s.boxes for s in items]
        with torch.inference_mode():
            pred = torch.cat([model(self.x[i:i + 32]).argmax(1) for i in range(0, len(self.x), 32)])
        self.correct = (pred == torch.tensor(self.labels)).numpy()

    def score(self, maps: np.ndarray) -> dict:
        ious = M.localization_ious(maps, self.boxes)
        s = M.localization_summary(ious, self.correct)
        return {k: s[k] for k in ("gt_known@0.2", "gt_known@0.15", "max_box_acc",
                                  "max_box_acc_threshold", "top1_loc_err")}


def layer_maps(model, imp, half: Half, positive: bool = True) -> dict[str, torch.Tensor]:
    out = {}
    for layer in imp.layers:
        out[layer] = torch.cat([chip_fast.explain(model, imp, half.x[i:i + 32],
                                                  half.labels[i:i + 32], layers=[layer],
                                                  positive=positive)
                                for i in range(0, len(half.x), 32)])
    return out


def score_importance(model, imp, half: Half, combos: dict[str, Combine] = COMBINE,
                     positive: bool = True) -> dict:
    maps = layer_maps(model, imp, half, positive)
    return {name: half.score(fn(maps[MID], maps[DEEP]).numpy()) for name, fn in combos.items()}


def score_peers(model, half: Half) -> dict:
    rows = {}
    for name, fn in peers_at([DEEP, MID]).items():
        t0 = time.perf_counter()
        maps = np.concatenate([fn(model, half.x[i:i + 32], half.labels[i:i + 32])
                               for i in range(0, len(half.x), 32)])
        rows[name] = half.score(maps) | {"seconds": time.perf_counter() - t0}
    return rows


def fit_report(imp) -> dict:
    """Held-out R^2 per layer: median, min and max over the classes."""
    q = imp.fit_quality()
    return {l: {"median": float(r.median()), "min": float(r.min()), "max": float(r.max()),
                "per_class": [round(float(v), 4) for v in r]} for l, r in q.items()}


def score(work: Path, out: Path, half_name: str = "selection",
          alphas: tuple = (0.03, 0.1, 0.3)) -> None:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = mobilenet_v2()
    half = Half(model, halves()[half_name])
    results: dict = {"half": half_name, "photos": len(half.labels)}
    cache = out / f"peers_{half_name}.json"
    results["peers"] = (json.loads(cache.read_text()) if cache.is_file()
                        else score_peers(model, half))
    cache.write_text(json.dumps(results["peers"], indent=1))
    results["runs"] = {}
    for path in sorted(work.glob("*.chip")):
        done = out / "runs" / f"{path.stem}_{half_name}.json"
        if done.is_file():       # scored before: runs are scored once each
            results["runs"][path.stem] = json.loads(done.read_text())
            continue
        imp = chip_fast.load_importance(path)
        run = {"distill_s": json.loads(path.with_suffix(".json").read_text())["seconds"],
               "r2": fit_report(imp), "alpha": {}}
        for a in alphas:   # every combination at the default alpha, the basic maps at others
            combos = COMBINE if a == 0.1 else {k: COMBINE[k] for k in BASIC}
            run["alpha"][str(a)] = score_importance(model, imp.refit(a), half, combos)
        basic = {k: COMBINE[k] for k in BASIC}
        run["alpha"]["0.1 nonneg"] = score_importance(model, imp.refit(0.1, nonneg=True), half,
                                                      basic)
        run["alpha"]["0.1 signed"] = score_importance(model, imp.refit(0.1), half, basic,
                                                      positive=False)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(run, indent=1))
        results["runs"][path.stem] = run
        print(f"scored {path.stem}", flush=True)
        (out / f"search_{half_name}.md").write_text(markdown(results))
    (out / f"summary_{half_name}.md").write_text(summary(results))
    seeds = [work / "noise_logit_1024.chip", work / "noise_logit_1024_seed1.chip"]
    if all(p.is_file() for p in seeds):
        a, b = (chip_fast.load_importance(p) for p in seeds)
        results["seed_overlap_top10"] = {l: top_channel_overlap(a, b, l) for l in a.layers}
    results["score_s"] = time.perf_counter() - t0
    (out / f"search_{half_name}.json").write_text(json.dumps(results, indent=1))
    (out / f"search_{half_name}.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    cols = ("gt_known@0.2", "max_box_acc", "top1_loc_err", "gt_known@0.15")
    lines = [f"{results['photos']} photos ({results['half']} half)", "",
             "| run | alpha | map | GT-known@0.2 | MaxBoxAcc | top-1 loc err | GT-known@0.15 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["peers"].items():
        lines.append(f"| peer | | {name} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    for run, r in results["runs"].items():
        for a, rows in r["alpha"].items():
            for combo, s in rows.items():
                lines.append(f"| {run} | {a} | {combo} | "
                             + " | ".join(f"{s[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def summary(results: dict) -> str:
    """One row per run: each layer's map and Refined CHIP (product) at alpha 0.1, and the
    product at the other alphas, with positive (nonneg fit) and signed weights."""
    def f(s: dict) -> str:
        return f"{s['gt_known@0.2']:.3f} / {s['max_box_acc']:.3f} / {s['top1_loc_err']:.3f}"
    lines = [f"{results['photos']} photos ({results['half']} half); cells: GT-known@0.2 / "
             "MaxBoxAcc / top-1 loc err", "",
             "| run | distill s | deep (18) | mid (14.conv.0) | Refined (product) | "
             "product, alpha 0.03 | product, alpha 0.3 | product, nonneg fit | "
             "product, signed |", "|---" * 9 + "|"]
    for run, r in results["runs"].items():
        a = r["alpha"]
        cells = [f(a["0.1"]["deep only"]), f(a["0.1"]["mid only"]), f(a["0.1"]["product"]),
                 f(a["0.03"]["product"]), f(a["0.3"]["product"])]
        cells += [f(a[k]["product"]) if k in a else "-" for k in ("0.1 nonneg", "0.1 signed")]
        lines.append(f"| {run} | {r['distill_s']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
