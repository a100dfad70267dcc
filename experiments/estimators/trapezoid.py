"""A control variate with each view's own slopes, from gradients at random keep masks, at a
14x14 layer whose tail is not affine (MobileNetV2 features.14.conv.0), in plain PyTorch beside
the engine.

    python -m experiments.estimators.trapezoid [--classes 5] [--samples 2048] [--grads 1 2 4]
        [--seeds 1 2] [--name trapezoid]

Why: most of the seed noise left by the orthogonal design is the views' own coefficients
(docs/stability.md). The first-order control variate (``python -m experiments.estimators``)
took each view's slope from the gradient at the half-scaled activation, about twice the slope
of dropping a channel, and gained 0.02. Here the slope of view v is the mean of the mask
gradients g = <dy/dx_k, a_k> at m random 0/1 masks: half of them see channel k kept and half
dropped, so their mean is the trapezoid rule for y(k kept) - y(k dropped), averaged over
contexts drawn from the mask distribution itself. The control variate of a sample is
``g_v . (z - p)``; its regression on z over the samples' views is ``mean g_v`` exactly, so the
estimand does not change (the remainder is regressed, that mean added back). Its masks come
from the seed, so two seeds stay two independent estimates. Cost: m backward passes of the
tail per view.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from chip_fast.solve.fit import solve_layer
from experiments.estimators.__main__ import LAYER, P, RESULTS, agreement, estimate
from experiments.estimators.designs import FOLDS, class_setup, engine_masks, responses


def gradients_at(tail, a, c, z: torch.Tensor) -> torch.Tensor:
    """(V, K) gradients of class c's logit with respect to the keep mask, view v at the mask
    values z[v] (zero fill), in batches of 32 views."""
    rows = []
    for i in range(0, len(a), 32):
        zi = z[i:i + 32, :, None, None].clone().requires_grad_(True)
        tail((a[i:i + 32].clone() * zi).contiguous(memory_format=torch.channels_last))[:, c].sum().backward()
        rows.append(zi.grad[:, :, 0, 0].detach().clone())
    return torch.cat(rows).double()


def mask_gradients(tail, a, c, m: int, seed: int) -> torch.Tensor:
    """(m, V, K) mask gradients, each view at m random Bernoulli(p) masks."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([gradients_at(tail, a, c, (torch.rand(
        a.shape[0], a.shape[1], generator=gen) < P).float()) for _ in range(m)])


def midpoint_gradients(tail, a, c) -> torch.Tensor:
    """(V, K) the earlier control variate's slopes: the gradient at the half-scaled activation."""
    return gradients_at(tail, a, c, torch.full(a.shape[:2], P))


def controlled(z, y, view, y0, g, cv):
    """The Lasso weights of one class with the control variate ``g_v . (z - p)`` (coefficient 1
    or fitted), its known regression taken over the samples' views as the samples weigh them."""
    y = y - P * y0[view]
    term = (g[view] * (z - P)).sum(1)
    if cv == "fit":
        tc = term - term.mean()
        b = float((tc * (y - y.mean())).sum() / (tc * tc).sum())
    else:
        b = 1.0
    y = y - b * term
    zc = z - z.mean(0)
    gram, r = zc.T @ zc / len(z), zc.T @ (y - y.mean()) / len(z)
    r = r + b * (gram @ g[view].mean(0))
    return solve_layer(gram, r[None], 0.1, nonneg=False, tol=1e-6, max_iter=5000)[0], b


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--grads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs=2, default=[1, 2])
    p.add_argument("--name", default="trapezoid")
    args = p.parse_args(argv)
    start = time.perf_counter()
    classes, tail, acts, k, y0 = class_setup(args.classes, args.photos)
    mid = {c: midpoint_gradients(tail, acts[c], c) for c in classes}
    variants = [("none", None, None), ("midpoint, fitted", "mid", "fit")]
    variants += [(f"{m} random masks, coefficient 1", m, 1.0) for m in args.grads]
    variants += [(f"{m} random masks, fitted", m, "fit") for m in args.grads]
    weights = {name: [] for name, _, _ in variants}
    coefs = {name: [] for name, _, _ in variants}
    grad_seconds = 0.0
    for seed in args.seeds:
        w = {name: [] for name, _, _ in variants}
        for i, c in enumerate(classes):
            z = engine_masks(args.samples, k, 1000 * seed + i, "orthogonal", FOLDS).double()
            y, view = responses(tail, acts, c, z.float())
            t = time.perf_counter()
            grads = mask_gradients(tail, acts[c], c, max(args.grads), 7919 * seed + i)
            grad_seconds += time.perf_counter() - t
            for name, src, cv in variants:
                if src is None:
                    w[name].append(estimate(z, y, view, y0[c], None, None))
                    continue
                g = mid[c] if src == "mid" else grads[:src].mean(0)
                wc, b = controlled(z, y, view, y0[c], g, cv)
                w[name].append(wc)
                coefs[name].append(b)
        for name in w:
            weights[name].append(torch.stack(w[name]))
    rows = [{"control_variate": name, **agreement(*weights[name]),
             "coefficient": statistics.median(coefs[name]) if coefs[name] else None}
            for name, _, _ in variants]
    result = {"layer": LAYER, "classes": classes, "samples_per_class": args.samples,
              "photos_per_class": args.photos, "seeds": args.seeds, "masks": "engine orthogonal per fold",
              "gradient_seconds_for_max_m": grad_seconds, "seconds": time.perf_counter() - start,
              "rows": rows, "command": "python -m experiments.estimators.trapezoid "
              + " ".join(sys.argv[1:] if argv is None else argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{LAYER}, {len(classes)} imagenette classes x {args.photos} photos, "
             f"{args.samples} samples per class (the engine's orthogonal masks), seeds "
             f"{args.seeds[0]} and {args.seeds[1]}:", "",
             "| control variate | median r | top-10 overlap | coefficient (median) |",
             "|---|---|---|---|"]
    lines += [f"| {r['control_variate']} | {r['median_r']:.3f} | {r['top10']:.2f} | "
              f"{'' if r['coefficient'] is None else format(r['coefficient'], '.2f')} |"
              for r in rows]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
