"""Balanced mask designs against independent and antithetic masks at a 14x14 layer whose tail is
not affine (MobileNetV2 features.14.conv.0), in plain PyTorch beside the engine.

    python -m experiments.estimators.designs [--classes 5] [--samples 2048] [--photos 300]
        [--designs independent antithetic orthogonal "orthogonal foldover" "engine antithetic"
                   "engine orthogonal" "engine orthogonal per fold"] [--seeds 1 2]
        [--name designs]

The orthogonal design: rows of a Sylvester-Hadamard matrix as 0/1 masks (row i, channel k keeps
the parity of popcount(i & code_k)), with distinct random nonzero codes per channel, a random
flip per channel and a random row order per block of 2^m >= K + 1 rows, all drawn from the seed.
The flip makes every row uniform on {0, 1}^K, as an independent Bernoulli(0.5) mask; within a
whole block every channel is kept exactly half the time and every pair of channels a quarter,
so the masks' Gram matrix is the population's exactly and the regression's estimand is the
same. "Foldover" adds each row's complement (the antithetic pair of a design row), which also
keeps two-channel interactions out of the main effects. The seed-to-seed agreement of the
weights says which wins, as in ``python -m experiments.estimators``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from chip_fast import rng
from experiments.estimators.__main__ import (LAYER, P, RESULTS, activations, agreement,
                                             estimate, model_and_source)

FOLDS = 4


def orthogonal_masks(n: int, k: int, seed: int, foldover: bool) -> torch.Tensor:
    """(n, k) float 0/1 masks of the randomised orthogonal design (module doc)."""
    m = max(1, math.ceil(math.log2(k + 1)))
    size = 1 << m
    draws = n // 2 if foldover else n
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(size)
    blocks = []
    for _ in range(0, draws, size):
        codes = torch.randperm(size - 1, generator=gen)[:k] + 1
        flip = torch.randint(0, 2, (k,), generator=gen)
        bits = rows[:, None] & codes[None, :]
        parity = torch.zeros_like(bits)
        for b in range(m):
            parity ^= (bits >> b) & 1
        blocks.append((parity ^ flip)[torch.randperm(size, generator=gen)])
    z = torch.cat(blocks)[:draws].float()
    if foldover:
        z = torch.stack([z, 1 - z], 1).reshape(n, k)
    return z


def engine_masks(n: int, k: int, seed: int, design: str, folds: int = 1) -> torch.Tensor:
    """The engine's own masks (``chip_fast.rng.keep_masks``) of samples 0..n-1; with
    ``folds``, the orthogonal design draws each fold's blocks of its own (pair j in fold
    j % folds), as a distillation with that many folds does."""
    return rng.keep_masks(seed, torch.arange(n), k, P, design, folds).float()


def independent_masks(n: int, k: int, seed: int, antithetic: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if antithetic:
        z = (torch.rand(n // 2, k, generator=gen) < P).float()
        return torch.stack([z, 1 - z], 1).reshape(n, k)
    return (torch.rand(n, k, generator=gen) < P).float()


DESIGNS = {
    "independent": lambda n, k, s: independent_masks(n, k, s, False),
    "antithetic": lambda n, k, s: independent_masks(n, k, s, True),
    "orthogonal": lambda n, k, s: orthogonal_masks(n, k, s, False),
    "orthogonal foldover": lambda n, k, s: orthogonal_masks(n, k, s, True),
    "engine antithetic": lambda n, k, s: engine_masks(n, k, s, "antithetic"),
    "engine orthogonal": lambda n, k, s: engine_masks(n, k, s, "orthogonal"),
    "engine orthogonal per fold": lambda n, k, s: engine_masks(n, k, s, "orthogonal", FOLDS),
}


def split_half(z, y, view, y0) -> float:
    """The agreement the file's folds predict (``chip_fast.solve.stability.stability``'s rule): the
    fits of folds {0, 1} and {2, 3} (pair j in fold j % 4), their r stepped up to the whole
    sample count (Spearman-Brown)."""
    fold = torch.arange(len(z)) // 2 % FOLDS
    halves = [fold < FOLDS // 2, fold >= FOLDS // 2]
    a, b = (estimate(z[h], y[h], view[h], y0, None, None) for h in halves)
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return 2 * r / (1 + r)


def responses(tail, acts, c, z):
    """Responses (n,) and views (n,) of class c under masks z, views spread as the engine does
    (a pair, rows 2j and 2j + 1, shares its view)."""
    a, n = acts[c], len(z)
    view = (torch.arange(n) // 2 * 2) * len(a) // n
    with torch.inference_mode():
        y = torch.cat([tail((a[view[i:i + 64]] * z[i:i + 64, :, None, None]).contiguous(
            memory_format=torch.channels_last))[:, c] for i in range(0, n, 64)])
    return y.double(), view


def baselines(tail, acts, c):
    """The unperturbed response of each view of class c (the per-view baseline)."""
    a = acts[c]
    with torch.inference_mode():
        return torch.cat([tail(a[i:i + 64])[:, c] for i in range(0, len(a), 64)]).double()


def class_setup(n_classes: int, photos: int):
    """The first ``n_classes`` imagenette classes, the layer's tail, each class's activations,
    the channel count and each view's unperturbed response."""
    model, source = model_and_source()
    classes = source.classes[:n_classes]
    tail, acts = activations(model, source, classes, photos)
    return classes, tail, acts, acts[classes[0]].shape[1], {
        c: baselines(tail, acts, c) for c in classes}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--seeds", type=int, nargs=2, default=[1, 2])
    p.add_argument("--name", default="designs", help="results/<name>.json and .md")
    args = p.parse_args(argv)
    start = time.perf_counter()
    classes, tail, acts, k, y0 = class_setup(args.classes, args.photos)
    rows = []
    for name in args.designs:
        design, weights, predicted = DESIGNS[name], [], []
        for seed in args.seeds:
            w = []
            for i, c in enumerate(classes):
                z = design(args.samples, k, 1000 * seed + i)
                y, view = responses(tail, acts, c, z)
                w.append(estimate(z.double(), y, view, y0[c], None, None))
                predicted.append(split_half(z.double(), y, view, y0[c]))
            weights.append(torch.stack(w))
        rows.append({"design": name, **agreement(*weights),
                     "predicted_r": statistics.median(predicted)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"layer": LAYER, "classes": classes, "samples_per_class": args.samples,
              "photos_per_class": args.photos, "seeds": args.seeds,
              "seconds": time.perf_counter() - start, "rows": rows,
              "command": "python -m experiments.estimators.designs " + " ".join(sys.argv[1:] if argv is None else argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{LAYER}, {len(classes)} imagenette classes x {args.photos} photos, "
             f"{args.samples} samples per class, seeds {args.seeds[0]} and {args.seeds[1]}, "
             "per-view baseline:", "",
             "| masks | median r | top-10 overlap | r the folds predict (median) |",
             "|---|---|---|---|"]
    lines += [f"| {r['design']} | {r['median_r']:.3f} | {r['top10']:.2f} | "
              f"{r['predicted_r']:.3f} |" for r in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
