"""Issue 21, item 2: does a third, finer layer make Refined CHIP beat the multi-layer peers?

    python -m experiments.imagenette.third_layer distill [--seeds 0,1]
    python -m experiments.imagenette.third_layer score --half selection [--seeds 0,1] [--peers]

MobileNetV2 is distilled with every library default at three layers in one job: the 28x28
presence layer that the default-layer rule would pick next (``features.7.conv.0``, the ReLU6'd
expansion before the stride-2 step to 14x14) and the two default layers. The maps are
``chip_fast.explain`` over subsets of those layers (the library's own product and powers), so a
subset equal to the defaults is the default map; the peers are pytorch-grad-cam's Layer-CAM at
the fine layer and RefineCAM over the three layers, the fair peers of a three-layer map. Choose on
the selection half, confirm on the other (results/third_layer/).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import chip_fast
from chip_fast.evaluation.peers import peer

from experiments.imagenette.common import (DEEP, MID, RESULTS, TRAIN, VAL, Half, distill_cached,
                                           library_defaults, mobilenet_v2)
from experiments.imagenette.maps_search import Photos

OUT = RESULTS / "third_layer"
FINE = "features.7.conv.0"
LAYERS = [FINE, MID, DEEP]
SUBSETS = {"Refined CHIP, defaults (14.conv.0 x 18)": [MID, DEEP],
           "Refined CHIP, 7.conv.0 x 14.conv.0 x 18": [FINE, MID, DEEP],
           "Refined CHIP, 7.conv.0 x 18": [FINE, DEEP],
           "CHIP @ 7.conv.0": [FINE]}
PEERS = {f"Layer-CAM @ {FINE}": ("layercam", FINE),
         f"Layer-CAM @ {MID}": ("layercam", MID),
         "RefineCAM (Layer-CAM) @ 14.conv.0 + 18": ("layercam-refined", [MID, DEEP]),
         "RefineCAM (Layer-CAM) @ 7.conv.0 + 14.conv.0 + 18": ("layercam-refined", LAYERS),
         "RefineCAM (Grad-CAM++) @ 7.conv.0 + 14.conv.0 + 18": ("gradcam++-refined", LAYERS)}
KEYS = ("gt_known@0.2", "max_box_acc_v2", "top1_loc_err")


def importance(model, seed: int) -> chip_fast.Importance:
    return distill_cached(model, OUT / f"mnv2_3layers_seed{seed}.chip", TRAIN, LAYERS,
                          **library_defaults(), seed=seed)


def chip_scores(model, photos: Photos, imp: chip_fast.Importance, layers: list[str],
                power: float | None) -> dict:
    kw = {} if power is None else {"refine_power": power}
    t0 = time.perf_counter()
    with torch.inference_mode():
        maps = torch.cat([chip_fast.explain(model, imp, photos.x[i:i + 32],
                                            photos.labels[i:i + 32], layers=layers, **kw)
                          for i in range(0, len(photos.x), 32)])
    return photos.score(maps.numpy()) | {"s": time.perf_counter() - t0}


def score(half_name: str, seeds: list[int], peers: bool, powers: list[float | None]) -> dict:
    from chip_fast.evaluation import load_val_dir
    model = mobilenet_v2()
    imps = {s: importance(model, s) for s in seeds}
    photos = Photos(model, Half(load_val_dir(VAL), 0 if half_name == "selection" else 1), LAYERS)
    results: dict = {}
    for name, layers in SUBSETS.items():
        for power in powers:
            key = name if power is None else f"{name}, power {power}"
            results[key] = {str(s): chip_scores(model, photos, imp, layers, power)
                            for s, imp in imps.items()}
            print(f"{key:60s} " + "  ".join(" ".join(f"{r[k]:.3f}" for k in KEYS)
                                            for r in results[key].values()), flush=True)
    for name, (method, at) in (PEERS.items() if peers else ()):
        results[name] = {"peer": peer_scores(model, photos, method, at)}
        print(f"{name:60s} " + " ".join(f"{results[name]['peer'][k]:.3f}" for k in KEYS),
              flush=True)
    return results


def peer_scores(model, photos: Photos, method: str, at) -> dict:
    """A pytorch-grad-cam peer's maps of the half, scored, with their time."""
    fn = peer(method, at)
    t0 = time.perf_counter()
    maps = np.concatenate([fn(model, photos.x[i:i + 16], photos.labels[i:i + 16].tolist())
                           for i in range(0, len(photos.x), 16)])
    return photos.score(maps) | {"s": time.perf_counter() - t0}


def report(path) -> str:
    """Markdown of a half's json: GT-known@0.2 / MaxBoxAccV2 / top-1 loc err per importance."""
    res = json.loads(path.read_text())
    lines = ["| map | GT-known@0.2 / MaxBoxAccV2 / top-1 loc err, per seed (or the peer) |",
             "|---|---|"]
    for name, per in res.items():
        lines.append(f"| {name} | " + "; ".join(
            f"{s}: " + " / ".join(f"{r[k]:.3f}" for k in KEYS) for s, r in per.items()) + " |")
    return "\n".join(lines) + "\n"


def save_half(path, res: dict) -> None:
    """Merge a half's results into its json (earlier entries of other names kept), and its md."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(res)
    path.write_text(json.dumps(old, indent=1))
    path.with_suffix(".md").write_text(report(path))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.third_layer")
    ap.add_argument("step", choices=["distill", "score"])
    ap.add_argument("--half", default="selection", choices=["selection", "confirmation"])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--peers", action="store_true")
    ap.add_argument("--powers", default="", help="refine powers besides the default, e.g. 0.25,1")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.step == "distill":
        model = mobilenet_v2()
        for s in seeds:
            importance(model, s)
            print(json.loads((OUT / f"mnv2_3layers_seed{s}.json").read_text())["seconds"])
        return
    powers = [None] + [float(p) for p in args.powers.split(",") if p]
    res = score(args.half, seeds, args.peers, powers)
    save_half(OUT / f"mobilenet_v2_{args.half}.json", res)


if __name__ == "__main__":
    main()
