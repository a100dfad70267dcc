"""Which 14x14 layer of MobileNetV2 makes a good mid layer for Refined CHIP.

    python -m experiments.mid_layers [--limit 150] [--samples 512]
        [--out experiments/mid_layers/results]

Distils the candidates and features.18 in one job (imagenet-sample/train, 8 views per photo,
the classes of the first --limit val photos), then scores each layer alone and each candidate
refined with features.18, with positive-only and with signed channel importance, on those
photos (localization on all, deletion/insertion on the first 50). Candidates:
  features.13         the last 14x14 stage output: a linear bottleneck (no ReLU), signed values;
  features.14.conv.0  the ReLU6'd 1x1 expansion that opens the next block, still 14x14.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, chip_method, evaluate, load_val_dir
from chip_fast.models import load_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
DEEP = "features.18"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.mid_layers")
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--candidates", default="features.13,features.14.conv.0")
    ap.add_argument("--faithfulness", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    dataset = load_val_dir(DATA / "imagenet-val-dev", limit=args.limit)
    classes = sorted(set(dataset.labels))
    mids = args.candidates.split(",")
    t0 = time.perf_counter()
    imp = chip_fast.distill_all_classes(
        model, chip_fast.ImageFolderSource(DATA / "imagenet-sample" / "train"), mids + [DEEP],
        classes=classes, samples_per_class=args.samples, augment=8, seed=0)
    distill_s = time.perf_counter() - t0
    methods = {}
    for layer in mids + [DEEP]:
        for positive in (False, True):
            methods[f"chip{'' if positive else '-signed'}@{layer}"] = chip_method(
                imp, [layer], positive=positive)
    for layer in mids:
        for positive in (False, True):
            methods[f"refined{'' if positive else '-signed'} {layer} x {DEEP}"] = chip_method(
                imp, [layer, DEEP], positive=positive)
    evaluate(model, methods, dataset, out,
             EvalSettings(faithfulness_limit=args.faithfulness, sanity_limit=0))
    (out / "run.json").write_text(json.dumps({
        "photos": len(dataset), "classes": len(classes), "samples_per_class": args.samples,
        "augment": 8, "distill_s": distill_s, "total_s": time.perf_counter() - t0,
        "device": f"CPU, {torch.get_num_threads()} threads"}, indent=2))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
