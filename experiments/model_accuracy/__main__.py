"""Top-1 of the models chip_fast loads with real weights, on the 630 ILSVRC val photos of
``../shared/data/imagenet-val-dev`` (472 classes): the README's check that a port reads its
weights right (a wrong padding, epsilon or normalisation drops it far lower).

    python -m experiments.model_accuracy [--arch efficientnet_lite0,...] [--out DIR]

Each model reads the photos with its own normalisation, resized straight to its own input side
(the photos are already 227x227 with the aspect not kept, so no crop). Writes ``results.md``
and ``results.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from chip_fast.evaluation import load_val_dir
from chip_fast.models import load_model
from chip_fast.models.loading import preprocess_of

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data"
VAL = DATA / "imagenet-val-dev"
WEIGHTS = {"mobilenet_v2": DATA / "weights" / "mobilenet_v2_imagenet1k.pth"}
ARCHS = "mobilenet_v2,efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"


def top1(arch: str, batch: int = 64) -> dict:
    model = load_model(arch, WEIGHTS.get(arch), "cpu")
    prep = replace(preprocess_of(model), mode="resize")
    data = load_val_dir(VAL, preprocess=prep)
    t0 = time.perf_counter()
    right = 0
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            items = [data[j] for j in range(i, min(i + batch, len(data)))]
            x = torch.stack([s.image for s in items])
            y = torch.tensor([s.label for s in items])
            right += int((model(x).argmax(1) == y).sum())
    return {"arch": arch, "photos": len(data), "top1": right / len(data), "side": prep.size,
            "mean": list(prep.mean), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.model_accuracy",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default=ARCHS, help="comma-separated (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if not VAL.is_dir():
        raise SystemExit(f"{VAL}: the ImageNet val photos are not here (../shared/data)")
    rows = [top1(a.strip()) for a in args.arch.split(",") if a.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | input side | top-1 on the 630 photos |", "|---|---|---|"]
    lines += [f"| {r['arch']} | {r['side']} | {100 * r['top1']:.1f}% |" for r in rows]
    text = "\n".join(["`python -m experiments.model_accuracy`", "", *lines, ""])
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
