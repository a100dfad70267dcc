"""The README's evaluation table: CHIP (per layer and Refined) against CAM, Grad-CAM, Grad-CAM++
and Layer-CAM on the real ILSVRC val photos of ../shared/data, in one run.

    python -m experiments.localization [--limit 630] [--samples 192]
        [--out experiments/localization/results/table]

The CPU timing in docs/evaluation.md was taken with glibc told to keep freed memory instead of
returning it to the system (the tails allocate and free tens of MB per batch; with the defaults
a third of the CPU time went to page faults):
    MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=4294967296 \
    MALLOC_TOP_PAD_=268435456 python -m experiments.localization

Distils MobileNetV2 at its default layers on imagenet-sample/train (one photo per class, 8 views
each: the photo, its mirror image and 6 random crops) for the classes of the evaluated photos,
then scores every method with chip_fast.evaluation on the same photos (224x224 resize, IoU >= 0.5
with any box). CHIP's maps are explain's defaults (positive channel importance); the same maps
with importance of both signs (METHOD.md's formula) are scored beside them, refined. Peers run at the
last convolutional layer, at every layer CHIP uses, and Layer-CAM also at features.16 (the
issue's reference for it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, chip_method, evaluate, load_val_dir
from chip_fast.evaluation.peers import peer
from chip_fast.models import load_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
LAST_CONV = "features.18"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.localization")
    ap.add_argument("--limit", type=int, default=630)
    # 192 samples per class is what a 30-minute run of the whole table allows on 2 CPU threads.
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--augment", type=int, default=8)
    ap.add_argument("--layers", help="layers to distil (default: chip_fast's default layers)")
    ap.add_argument("--faithfulness", type=int, default=50, help="photos with deletion/insertion")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "table"))
    ap.add_argument("--importance", help="reuse a distilled file instead of distilling")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    layers = args.layers.split(",") if args.layers else chip_fast.default_layers(model)
    dataset = load_val_dir(DATA / "imagenet-val-dev", limit=args.limit)
    classes = sorted(set(dataset.labels))
    t0 = time.perf_counter()
    if args.importance:
        imp = chip_fast.load_importance(args.importance)
    else:
        src = chip_fast.ImageFolderSource(DATA / "imagenet-sample" / "train")
        imp = chip_fast.distill_all_classes(model, src, layers, classes=classes,
                                            samples_per_class=args.samples, augment=args.augment,
                                            seed=0)
        imp.save(out / "mnv2.chip")
    distill_s = time.perf_counter() - t0
    methods = {"chip-refined": chip_method(imp, layers)}
    for layer in layers:
        methods[f"chip@{layer}"] = chip_method(imp, [layer])
    methods["chip-refined-signed"] = chip_method(imp, layers, positive=False)
    if not args.no_peers:
        methods[f"cam@{LAST_CONV}"] = peer("cam", LAST_CONV)
        peer_layers = list(dict.fromkeys([LAST_CONV] + layers))
        for name in ("gradcam", "gradcam++", "layercam"):
            for layer in peer_layers:
                methods[f"{name}@{layer}"] = peer(name, layer)
        if "features.16" not in peer_layers:
            methods["layercam@features.16"] = peer("layercam", "features.16")
    settings = EvalSettings(faithfulness_limit=args.faithfulness, sanity_limit=50)
    t1 = time.perf_counter()
    results = evaluate(model, methods, dataset, out, settings)
    meta = {"photos": len(dataset), "classes": len(classes), "samples_per_class": args.samples,
            "augment": args.augment, "layers": layers, "distill_s": distill_s,
            "evaluate_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0,
            "device": f"CPU, {torch.get_num_threads()} threads"}
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
