"""The receptive field of the atlas's layers, measured: for MobileNetV2 (real ImageNet weights)
and EfficientNet-Lite0 (the pip package's weights) at their default layers, the theoretical
receptive field and the effective one (ERF, ``chip_fast.atlas.receptive_field``) on photos of
imagenette/train, per layer at several shares of the gradient mass and per channel (its spread),
and what the atlas's own cheap measurement (its first views) finds and costs.

    python -m experiments.atlas_rf [--photos 16] [--channels 24] [--out DIR]

Writes ``results.md`` and ``results.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.atlas.receptive_field import (ERF_CHANNELS, ERF_SHARE, ERF_VIEWS, cell_centre,
                                             centroid_offset, gradient_rows, layer_maps,
                                             measure_erf, side_of_share, spread_channels,
                                             theoretical_rf)
from chip_fast.models import load_model
from chip_fast.models.loading import preprocess_of
from chip_fast.models.split import split_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
SHARES = (0.5, 0.8, 0.9)


def photos(folder: Path, n: int, prep) -> torch.Tensor:
    """``n`` photos, round robin over the sorted class folders (the i-th photo of each class in
    turn), preprocessed as the model was trained: (n, 3, H, W)."""
    from PIL import Image
    classes = [sorted(d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()]
    paths = [classes[i % len(classes)][i // len(classes)] for i in range(n)]
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(prep(im.convert("RGB")))
    return torch.stack(out)


def channel_sides(model: torch.nn.Module, layers: list[str], x: torch.Tensor, per_layer: int,
                  chunk: int = 32) -> dict[str, dict]:
    """Per layer: the ERF side (px) at each share of the mean |grad| over every (photo,
    channel) row, and each probed channel's side at ERF_SHARE (its mean over the photos)."""
    split = split_model(model, layers)
    maps = layer_maps(split)
    with torch.no_grad():
        shapes = {l: tuple(a.shape[1:]) for l, a in maps(x[:1]).items()}
    chans = {l: spread_channels(shapes[l][0], per_layer) for l in layers}
    n, step = len(x), max(1, chunk // len(x))
    mass = {l: torch.zeros(per_layer, *x.shape[-2:]) for l in layers}
    for c0 in range(0, per_layer, step):
        cs = {l: chans[l][c0:c0 + step].repeat_interleave(n) for l in layers}
        g = gradient_rows(maps, x, layers, cs)         # row r: photo r % n, channel r // n
        for l in layers:
            mass[l][c0:c0 + step] = g[l].view(-1, n, *x.shape[-2:]).mean(1)
    out = {}
    for l in layers:
        centre = cell_centre(shapes[l][1:], tuple(x.shape[-2:]))
        live = [i for i in range(per_layer) if float(mass[l][i].sum()) > 0]
        if not live:
            raise ValueError(f"{l}: no probed channel moves at the central cell; probe more")
        out[l] = {"grid": list(shapes[l][1:]), "channels": shapes[l][0],
                  "stride": x.shape[-2] / shapes[l][1],
                  "layer_side": {str(s): side_of_share(mass[l].mean(0), centre, s)
                                 for s in SHARES},
                  "channel_sides": [side_of_share(mass[l][i], centre, ERF_SHARE) for i in live],
                  "offset": centroid_offset(mass[l].mean(0), centre),
                  "probed": per_layer}
    return out


def atlas_measurement(model: torch.nn.Module, layers: list[str], x: torch.Tensor) -> dict:
    """What the atlas's observer measures (ERF_VIEWS views, ERF_CHANNELS channels each) and its
    cost against one prefix pass of the same views."""
    split = split_model(model, layers)
    views = x[:ERF_VIEWS]
    with torch.inference_mode():
        split.run_prefix(views)                        # binds layouts; warm-up
        t0 = time.perf_counter()
        split.run_prefix(views)
        prefix_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        erf = measure_erf(layer_maps(split), views, layers)
        erf_s = time.perf_counter() - t0
    return {"prefix_s": prefix_s, "erf_s": erf_s,
            "sides": {l: e.side_px for l, e in erf.items()}}


def fmt_px(px: float, stride: float) -> str:
    return f"{px:.0f} ({px / stride:.1f})"


def table(results: dict) -> str:
    share = f"{ERF_SHARE:.0%}"
    head = ("| model | layer | grid | stride | theoretical RF px (strides) | "
            + " | ".join(f"ERF {s:.0%} px (strides)" for s in SHARES)
            + f" | per-channel ERF {share}, strides: p10 / median / p90 (live/probed) "
            "| ERF centroid from the cell centre, px (y, x) "
            f"| atlas's own ERF {share} px (strides) |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, r in results.items():
        for layer, m in r["layers"].items():
            st = m["stride"]
            cs = sorted(s / st for s in m["channel_sides"])
            q = statistics.quantiles(cs, n=10) if len(cs) > 1 else cs * 9
            spread = (f"{q[0]:.1f} / {statistics.median(cs):.1f} / {q[-1]:.1f} "
                      f"({len(cs)}/{m['probed']})")
            erfs = " | ".join(fmt_px(m["layer_side"][str(s)], st) for s in SHARES)
            rows.append(f"| {model} | {layer} | {m['grid'][0]}x{m['grid'][1]} | {st:.0f} | "
                        f"{fmt_px(m['theoretical'], st)} | {erfs} | {spread} | "
                        f"{m['offset'][0]:+.1f}, {m['offset'][1]:+.1f} | "
                        f"{fmt_px(r['atlas']['sides'][layer], st)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.atlas_rf")
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--channels", type=int, default=24, help="channels probed per layer")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    data, out = Path(args.data), Path(args.out)
    models = {"mobilenet_v2": (lambda: load_model(
                  "mobilenet_v2", data / "weights" / "mobilenet_v2_imagenet1k.pth")),
              "efficientnet_lite0": lambda: load_model("efficientnet_lite0")}
    results = {}
    t0 = time.perf_counter()
    for name, make in models.items():
        model = make()
        layers = chip_fast.default_layers(model)
        x = photos(data / "imagenette" / "train", args.photos, preprocess_of(model))
        measured = channel_sides(model, layers, x, args.channels)
        for l in layers:
            measured[l]["theoretical"] = theoretical_rf(model, l, x)
        results[name] = {"layers": measured, "atlas": atlas_measurement(model, layers, x)}
        print(name, json.dumps(results[name]["atlas"]), flush=True)
    run = {"command": " ".join(["python -m experiments.atlas_rf", *sys.argv[1:]]),
           "photos": args.photos, "channels": args.channels, "share": ERF_SHARE,
           "atlas_views": ERF_VIEWS, "atlas_channels_per_view": ERF_CHANNELS,
           "seconds": round(time.perf_counter() - t0), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads()}
    md = table(results)
    cost = "\n".join(
        f"- {name}: the atlas's ERF measurement ({ERF_VIEWS} views x {ERF_CHANNELS} channels, "
        f"both layers) took {r['atlas']['erf_s']:.1f} s, one prefix pass of the same "
        f"{ERF_VIEWS} views {r['atlas']['prefix_s']:.2f} s "
        f"({r['atlas']['erf_s'] / r['atlas']['prefix_s']:.0f}x)"
        for name, r in results.items())
    print(md)
    print(cost)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"run": run, "results": results}, indent=1))
    (out / "results.md").write_text(
        f"# Receptive fields of the atlas layers\n\n`{run['command']}` "
        f"({args.photos} photos of imagenette/train, {args.channels} channels per layer, "
        f"central cell; {run['seconds']} s on {run['threads']} CPU threads, a shared machine)"
        f"\n\n{md}\n\nCost on this machine (a one-off per atlas):\n\n{cost}\n")


if __name__ == "__main__":
    main()
