"""Issue 21, item 2: how maps are made from a distilled importance and the activations, searched
on cached importances (no redistillation per variant).

    python -m experiments.imagenette.maps_search [--arch mobilenet_v2|efficientnet_lite0]
        [--half selection] [--seeds 0,1] [--only name,name] [--out DIR]

Each variant is (how a layer's channels are weighted, how the layers combine), scored on one
half of imagenette/val-dev with the evaluation's own metrics (GT-known@0.2 and top-1 loc err on
the largest component, MaxBoxAccV2 as clovaai/wsolevaluation). Activations are computed once
per half; a variant costs its maps and their scoring only. The importances are distilled once
with every library default (``<out>/<arch>_seed<s>.chip``, not committed; ``--out`` defaults to
``results/maps_search``, the first search, so a later search with today's defaults keeps its own
importances and results beside it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import chip_fast
from chip_fast.evaluation import load_val_dir, metrics as M, wsol
from chip_fast.evaluation.peers import peer
from chip_fast.models import load_model
from chip_fast.models.split import split_model
from chip_fast.ops.class_maps import normalize_maps

from experiments.imagenette.common import (RESULTS, TRAIN, VAL, Half, distill_cached,
                                           library_defaults, mobilenet_v2)
from experiments.imagenette.map_variants import VARIANTS

OUT = RESULTS / "maps_search"


def model_and_data(arch: str):
    if arch == "mobilenet_v2":
        return mobilenet_v2(), load_val_dir(VAL)
    from chip_fast.models.efficientnet_lite import lite_preprocess
    return load_model(arch), load_val_dir(VAL, preprocess=lite_preprocess(mode="resize"))


def importance(model, arch: str, tag: str, seed: int, out: Path = OUT) -> chip_fast.Importance:
    """The cached importance of ``seed``, or a distillation with every library default on
    imagenette/train (1-25 min on 2 CPU cores; Lite0 reads it with its own [-1, 1] preprocessing,
    which ``distill_cached``'s default source does not)."""
    path = out / f"{tag}_seed{seed}.chip"
    if arch == "mobilenet_v2" or path.is_file():
        return distill_cached(model, path, TRAIN, None, **library_defaults(), seed=seed)
    from chip_fast.models.efficientnet_lite import lite_preprocess
    t0 = time.perf_counter()
    imp = chip_fast.distill_all_classes(
        model, chip_fast.ImageFolderSource(TRAIN, preprocess=lite_preprocess()), None,
        progress=False, **library_defaults(), seed=seed)
    imp.save(path)
    path.with_suffix(".json").write_text(json.dumps(
        {"seconds": time.perf_counter() - t0, "layers": imp.layers, "seed": seed}))
    return imp


class Photos:
    """One half in memory with its activations at ``layers`` and whether the model is right."""

    def __init__(self, model, half, layers: list[str]) -> None:
        items = [half[i] for i in range(len(half))]
        self.x = torch.stack([s.image for s in items])
        self.labels = torch.tensor([s.label for s in items])
        self.boxes = [s.boxes for s in items]
        split = split_model(model, layers)
        acts: dict[str, list] = {l: [] for l in layers}
        logits = []
        with torch.inference_mode():
            for i in range(0, len(self.x), 32):
                a, lg = split.forward(self.x[i:i + 32])
                for l in layers:
                    acts[l].append(a[l].float().clone())
                logits.append(lg)
        self.acts = {l: torch.cat(v) for l, v in acts.items()}
        self.correct = (torch.cat(logits).argmax(1) == self.labels).numpy()

    def score(self, maps: np.ndarray) -> dict:
        s = M.localization_summary(M.localization_ious(maps, self.boxes), self.correct)
        v2 = wsol.max_box_acc_v2(wsol.multi_contour_ious(maps, self.boxes, wsol.v2_thresholds()),
                                 wsol.v2_thresholds())
        return {"gt_known@0.2": s["gt_known@0.2"], "max_box_acc": s["max_box_acc"],
                "max_box_acc_v2": v2["max_box_acc_v2"], "top1_loc_err": s["top1_loc_err"],
                "best_threshold": s["max_box_acc_threshold"]}


def channel_stats(model, layers: list[str], arch: str, per_class: int = 32) -> dict:
    """Per layer, each channel's mean and std over positions and the first ``per_class`` train
    photos of every class (what a zero-fill importance file does not keep)."""
    from PIL import Image
    from chip_fast.models.loading import preprocess_of
    prep = preprocess_of(model)
    files = [f for d in sorted(TRAIN.iterdir()) if d.is_dir() for f in sorted(d.iterdir())[:per_class]]
    split = split_model(model, layers)
    s1 = {l: 0.0 for l in layers}
    s2 = {l: 0.0 for l in layers}
    n = 0
    with torch.inference_mode():
        for i in range(0, len(files), 32):
            x = torch.stack([prep(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
            a, _ = split.forward(x)
            for l in layers:
                s1[l] = s1[l] + a[l].float().mean((2, 3)).sum(0)
                s2[l] = s2[l] + (a[l].float() ** 2).mean((2, 3)).sum(0)
            n += len(x)
    return {l: (s1[l] / n, (s2[l] / n - (s1[l] / n) ** 2).clamp(min=0).sqrt()) for l in layers}


def upsample(low: torch.Tensor, size=(224, 224)) -> torch.Tensor:
    return normalize_maps(F.interpolate(low[:, None], size=size, mode="bilinear",
                                        align_corners=False)[:, 0])


def run(arch: str, half_name: str, seeds: list[int], only: list[str] | None,
        peers: list[str] | None = None, out: Path = OUT) -> dict:
    model, data = model_and_data(arch)
    tag = "mnv2" if arch == "mobilenet_v2" else "lite0"
    out.mkdir(parents=True, exist_ok=True)
    imps = {s: importance(model, arch, tag, s, out) for s in seeds}
    layers = imps[seeds[0]].layers
    t0 = time.perf_counter()
    stats_path = OUT / f"{tag}_channel_stats.pt"
    if not stats_path.is_file():
        torch.save(channel_stats(model, layers, arch), stats_path)
    stats = torch.load(stats_path)
    for imp in imps.values():
        if not imp.fill_mean:
            imp.fill_mean = {l: m for l, (m, _) in stats.items()}
            imp.fill_std = {l: sd for l, (_, sd) in stats.items()}
    photos = Photos(model, Half(data, 0 if half_name == "selection" else 1), layers)
    print(f"activations {time.perf_counter() - t0:.0f}s", flush=True)
    results: dict = {}
    for name, variant in VARIANTS.items():
        if only and name not in only:
            continue
        results[name] = {}
        for s, imp in imps.items():
            t1 = time.perf_counter()
            maps = variant(imp, photos.acts, photos.labels, upsample)
            results[name][s] = photos.score(maps.numpy()) | {"s": time.perf_counter() - t1}
        r = results[name]
        print(f"{name:50s} " + "  ".join(
            " ".join(f"{r[s][k]:.3f}" for k in ("gt_known@0.2", "max_box_acc_v2", "top1_loc_err"))
            for s in seeds), flush=True)
    for name in peers or []:
        method, _, at = name.partition("@")
        fn = peer(method, at.split("+") if "+" in at else at)
        t1 = time.perf_counter()
        maps = np.concatenate([fn(model, photos.x[i:i + 16], photos.labels[i:i + 16].tolist())
                               for i in range(0, len(photos.x), 16)])
        results[name] = {"peer": photos.score(maps) | {"s": time.perf_counter() - t1}}
        r = results[name]["peer"]
        print(f"{name:50s} " + " ".join(f"{r[k]:.3f}" for k in
                                        ("gt_known@0.2", "max_box_acc_v2", "top1_loc_err")),
              flush=True)
    return results


KEYS = ("gt_known@0.2", "max_box_acc_v2", "top1_loc_err")


def report(out: Path = OUT) -> str:
    """Markdown of every scored variant and peer: per architecture and half, GT-known@0.2 /
    MaxBoxAccV2 / top-1 loc err, one cell per importance (seed)."""
    lines = []
    for arch in ("mobilenet_v2", "efficientnet_lite0"):
        for half in ("selection", "confirmation"):
            path = out / f"{arch}_{half}.json"
            if not path.is_file():
                continue
            res = json.loads(path.read_text())
            lines += [f"### {arch}, {half} half", "",
                      "| map | GT-known@0.2 / MaxBoxAccV2 / top-1 loc err, per importance |",
                      "|---|---|"]
            for name, per in res.items():
                cells = [f"{s}: " + " / ".join(f"{r[k]:.3f}" for k in KEYS) for s, r in per.items()]
                lines.append(f"| {name} | " + "; ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.maps_search")
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--half", default="selection")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--only", default="")
    ap.add_argument("--peers", default="", help="e.g. layercam@features.8,layercam-refined@a+b")
    ap.add_argument("--report", action="store_true", help="only write results.md from the json")
    ap.add_argument("--out", type=Path, default=OUT, help="importances and results (%(default)s)")
    args = ap.parse_args()
    if args.report:
        (args.out / "results.md").write_text(report(args.out))
        return
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    res = run(args.arch, args.half, seeds, [o for o in args.only.split(",") if o] or None,
              [p for p in args.peers.split(",") if p], args.out)
    path = args.out / f"{args.arch}_{args.half}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update({k: {str(s): v for s, v in r.items()} for k, r in res.items()})
    path.write_text(json.dumps(old, indent=1))
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
