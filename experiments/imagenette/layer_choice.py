"""Issue 21, item 2, "which layers": is another 14x14 (or 7x7) presence layer a better factor of
Refined CHIP than the ones the default-layer rule picks?

    python -m experiments.imagenette.layer_choice distill [--arch mobilenet_v2] [--seeds 0]
    python -m experiments.imagenette.layer_choice score --half selection [--seeds 0] [--peers]
        [--deep-powers 0.75,0.5]

The rule (``chip_fast.models.layers``) takes the last ReLU-like output at the deepest resolution
and at twice it. Here every candidate layer is distilled with every library default in one job
per seed, and the maps are ``chip_fast.explain`` over each (mid, deep) pair, so the pair of the
rule is the default map up to the bfloat16 prefix's rounding (the prefix is cut at the job's
first layer: r 0.99996 to a two-layer job's weights of the same seed, docs/evaluation.md).
The fair peers are Layer-CAM at each candidate mid layer and RefineCAM (Layer-CAM) over each
pair. Choose on the selection half, confirm on the other (results/layer_choice/).
"""
from __future__ import annotations

import argparse
import json

import torch

import chip_fast
from chip_fast.maps.explain import REFINE_POWER, layer_maps, refine

from experiments.imagenette.common import (RESULTS, TAGS, TRAIN, Half, arch_setup, distill_cached,
                                           library_defaults)
from experiments.imagenette.maps_search import Photos
from experiments.imagenette.third_layer import KEYS, chip_scores, peer_scores, save_half

OUT = RESULTS / "layer_choice"
# Candidates: ReLU6 outputs at 14x14 (MobileNetV2 blocks 12-14: the depthwise output of 12 and
# 13, the expansion of 13 and 14; the Lites: the last 14x14 block's expansion and depthwise (Lite1
# 15x15, Lite2 17x17), and the expansion opening stage 6) and at 7x7 (the head conv, the last
# depthwise).
CANDIDATES = {
    "mobilenet_v2": (["features.12.conv.1", "features.13.conv.0", "features.13.conv.1",
                      "features.14.conv.0"], ["features.18", "features.17.conv.1"]),
    "efficientnet_lite0": (["features.5.2.block.0", "features.5.2.block.1",
                            "features.6.0.block.0"],
                           ["features.8", "features.7.0.block.1"]),
    "efficientnet_lite1": (["features.5.3.block.0", "features.5.3.block.1",
                            "features.6.0.block.0"],
                           ["features.8", "features.7.0.block.1"]),
    "efficientnet_lite2": (["features.5.3.block.0", "features.5.3.block.1",
                            "features.6.0.block.0"],
                           ["features.8", "features.7.0.block.1"]),
}


def importance(arch: str, model, prep, seed: int) -> chip_fast.Importance:
    mids, deeps = CANDIDATES[arch]
    return distill_cached(model, OUT / f"{TAGS[arch]}_candidates_seed{seed}.chip", TRAIN,
                          mids + deeps, prep, **library_defaults(), seed=seed)


def pairs(arch: str) -> dict[str, list[str]]:
    mids, deeps = CANDIDATES[arch]
    out = {f"CHIP @ {m}": [m] for m in mids}
    out.update({f"Refined CHIP {m} x {d}": [m, d] for d in deeps for m in mids})
    return out


def peers(arch: str) -> dict[str, tuple[str, object]]:
    mids, deeps = CANDIDATES[arch]
    out = {f"Layer-CAM @ {m}": ("layercam", m) for m in mids}
    out.update({f"RefineCAM (Layer-CAM) @ {m} + {d}": ("layercam-refined", [m, d])
                for d in deeps for m in mids})
    return out


def deep_power_scores(photos: Photos, imp: chip_fast.Importance, mid: str, deep: str,
                      power: float) -> dict:
    """The rule's pair with the deep layer's activations at ``power`` too (explain gives it
    power 1: its tail is affine): is a gain of another deep layer only the compression?"""
    index, size = torch.arange(len(photos.x)), tuple(photos.x.shape[-2:])
    maps = [layer_maps(photos.acts[layer], imp.weights[layer], index, photos.labels, size,
                       power=pw) for layer, pw in ((mid, REFINE_POWER), (deep, power))]
    return photos.score(refine(maps).numpy())


def line(name: str, per: dict) -> str:
    return f"{name:64s} " + "  ".join(" ".join(f"{r[k]:.3f}" for k in KEYS) for r in per.values())


def score(arch: str, half_name: str, seeds: list[int], with_peers: bool,
          deep_powers: list[float]) -> dict:
    model, data, prep = arch_setup(arch)
    imps = {s: importance(arch, model, prep, s) for s in seeds}
    layers = sum(CANDIDATES[arch], [])
    photos = Photos(model, Half(data, 0 if half_name == "selection" else 1), layers)
    results: dict = {}
    for name, chosen in pairs(arch).items():
        results[name] = {str(s): chip_scores(model, photos, imp, chosen, None)
                         for s, imp in imps.items()}
        print(line(name, results[name]), flush=True)
    mid, deep = CANDIDATES[arch][0][-1], CANDIDATES[arch][1][0]
    for power in deep_powers:
        name = f"Refined CHIP {mid} x {deep}, {deep} at power {power}"
        results[name] = {str(s): deep_power_scores(photos, imp, mid, deep, power)
                         for s, imp in imps.items()}
        print(line(name, results[name]), flush=True)
    for name, (method, at) in (peers(arch).items() if with_peers else ()):
        results[name] = {"peer": peer_scores(model, photos, method, at)}
        print(line(name, results[name]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.layer_choice")
    ap.add_argument("step", choices=["distill", "score"])
    ap.add_argument("--arch", default="mobilenet_v2", choices=sorted(CANDIDATES))
    ap.add_argument("--half", default="selection", choices=["selection", "confirmation"])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--deep-powers", default="", help="e.g. 0.75,0.5: the rule's pair with the "
                    "deep layer's activations at these powers")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.step == "distill":
        model, _, prep = arch_setup(args.arch)
        for s in seeds:
            importance(args.arch, model, prep, s)
            info = json.loads((OUT / f"{TAGS[args.arch]}_candidates_seed{s}.json").read_text())
            print(f"seed {s}: {info['seconds']:.0f} s")
        return
    res = score(args.arch, args.half, seeds, args.peers,
                [float(p) for p in args.deep_powers.split(",") if p])
    save_half(OUT / f"{args.arch}_{args.half}.json", res)


if __name__ == "__main__":
    main()
