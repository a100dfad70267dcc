"""The README's evaluation table: CHIP (per layer and Refined) against CAM, Grad-CAM, Grad-CAM++
and Layer-CAM on the real ILSVRC val photos of ../shared/data, in one run.

    python bench/localization_table.py [--limit 630] [--samples 256] [--out bench/results/loc]

Distils MobileNetV2 on imagenet-sample/train (one photo per class, 8 views each: the photo,
its mirror image and 6 random crops) for the classes of the evaluated photos, then scores every
method with chip_fast.evaluation on the same photos (224x224 resize, IoU >= 0.5 with any box).
Besides the METHOD.md maps it scores two map variants from the same importance, to measure
what the map formula costs or gains:
  centred   ReLU(sum_k W[c,k] (A_k - mu_k)): the regression measures the effect of a channel
            against its fill (mean mu_k), so deviation from the mean is what carries evidence;
  positive  ReLU(sum_k max(W[c,k], 0) A_k): positive evidence only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

import chip_fast
from chip_fast.evaluation.dataset import load_val_dir
from chip_fast.evaluation.interop import chip_method
from chip_fast.evaluation.peers import peer
from chip_fast.evaluation.runner import EvalSettings, evaluate
from chip_fast.layers import capture_activations
from chip_fast.maps import normalize_maps, refine, upsample_normalize_reference

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


def variant(imp, layers: list[str], kind: str):
    """A CHIP map function with another map formula, from the same importance."""
    def one(acts, layer, classes, size):
        a = acts[layer].float()
        w = imp.weights[layer][classes].float()
        if kind == "centred":
            a = a - imp.fill_mean[layer].float()[None, :, None, None]
        elif kind == "positive":
            w = w.clamp(min=0)
        m = torch.relu(torch.einsum("bk,bkhw->bhw", w, a))
        return upsample_normalize_reference(m, size)

    def fn(model, images, classes):
        classes = torch.as_tensor(list(classes))
        with torch.inference_mode(), capture_activations(model, layers) as acts:
            model(images)
            maps = [one(acts, l, classes, tuple(images.shape[-2:])) for l in layers]
        return refine(maps).numpy()

    fn.method, fn.layer = f"chip-{kind}", "+".join(layers)
    return fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=630)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--augment", type=int, default=8)
    ap.add_argument("--layers", default="features.16,features.18")
    ap.add_argument("--faithfulness", type=int, default=100, help="photos with deletion/insertion")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "localization"))
    ap.add_argument("--importance", help="reuse a distilled file instead of distilling")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = args.layers.split(",")
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(DATA / "weights" / "mobilenet_v2_imagenet1k.pth",
                                     weights_only=True))
    model.eval()
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
    methods = {}
    for layer in layers:
        methods[f"chip@{layer}"] = chip_method(imp, [layer])
    methods["chip-refined"] = chip_method(imp, layers)
    for kind in ("centred", "positive"):
        for layer in layers:
            methods[f"chip-{kind}@{layer}"] = variant(imp, [layer], kind)
        methods[f"chip-{kind}-refined"] = variant(imp, layers, kind)
    if not args.no_peers:
        methods["cam@features.18"] = peer("cam", "features.18")
        for name in ("gradcam", "gradcam++", "layercam"):
            for layer in layers:
                methods[f"{name}@{layer}"] = peer(name, layer)
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
