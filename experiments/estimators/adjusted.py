"""A free control variate for the views' differing coefficients, at MobileNetV2
features.14.conv.0: does scaling a class's coefficients per channel by how active the channel is
on each view remove the heterogeneity that dominates the seed noise there?

    python -m experiments.estimators.adjusted [--classes 5] [--samples 4096] [--photos 300]

The term ``h_i = b sum_k g_k (rel_vk - 1)(z_ik - p)`` (rel_vk: the channel's spatial mean on view
v over its mean across the class's views) has population regression coefficients
``b g * mean_v (rel_v - 1) = 0`` on the mask for any fixed g and b, so regressing ``y - h`` on the
mask keeps the estimand. g is the plain fit of the other folds (cross-fitting, so that g does not
depend on the samples it adjusts), or an oracle: the plain fit of an independent run of the same
size. b is one least-squares coefficient per class. Masks are the engine's (orthogonal, a design
per fold); the seed-to-seed agreement of the weights says whether it wins.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from experiments.estimators.__main__ import LAYER, P, RESULTS, agreement, estimate
from experiments.estimators.designs import FOLDS, class_setup, engine_masks, responses
from experiments.estimators.trapezoid import midpoint_gradients


def rel_term(z, view, rel, g_of_fold) -> torch.Tensor:
    """``sum_k g_k (rel_vk - 1)(z_ik - p)`` per sample, g of the sample's fold."""
    fold = torch.arange(len(z)) // 2 % FOLDS
    h = torch.zeros(len(z), dtype=torch.float64)
    for f in range(FOLDS):
        rows = fold == f
        h[rows] = ((rel[view[rows]] - 1) * (z[rows] - P) * g_of_fold(f)).sum(1)
    return h


def grad_term(z, view, slopes) -> torch.Tensor:
    """``sum_k (q_vk - mean_v q_vk)(z_ik - p)``: each view's slope q (the mask gradient at the
    half-scaled view) less its mean over views, so its regression on the mask is zero."""
    return ((slopes - slopes.mean(0))[view] * (z - P)).sum(1)


def adjusted(z, y, view, y0, terms):
    """The plain estimate on ``y - sum_j b_j h_j`` with the b_j fitted by least squares."""
    h = torch.stack(terms, 1)
    resid = y - P * y0[view]
    hc, rc = h - h.mean(0), resid - resid.mean()
    b = torch.linalg.lstsq(hc, rc[:, None]).solution[:, 0]
    return estimate(z, y - h @ b, view, y0, None, None), b.tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--photos", type=int, default=300)
    p.add_argument("--name", default="adjusted")
    args = p.parse_args(argv)
    start = time.perf_counter()
    classes, tail, acts, k, y0 = class_setup(args.classes, args.photos)
    names = ["plain", "cross-fitted g", "oracle g", "view gradients", "cross-fitted g + gradients"]
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    coefficients: dict[str, list] = {n: [] for n in names[1:]}
    for c_i, c in enumerate(classes):
        act = acts[c].double().mean((2, 3))
        rel = torch.where(act.mean(0) > 0, act / act.mean(0).clamp_min(1e-12),
                          torch.zeros_like(act))
        runs = {}
        for seed in (1, 2, 3):
            z = engine_masks(args.samples, k, 1000 * seed + c_i, "orthogonal", FOLDS)
            y, view = responses(tail, acts, c, z)
            runs[seed] = (z.double(), y, view)
        oracle = estimate(*runs[3], y0[c], None, None)
        slopes = midpoint_gradients(tail, acts[c], c)
        for name, out in rows.items():
            ws = []
            for seed in (1, 2):
                z, y, view = runs[seed]
                if name == "plain":
                    ws.append(estimate(z, y, view, y0[c], None, None))
                    continue
                fold = torch.arange(len(z)) // 2 % FOLDS
                fits = {f: estimate(z[fold != f], y[fold != f], view[fold != f], y0[c],
                                    None, None) for f in range(FOLDS)}
                terms = {"oracle g": [rel_term(z, view, rel, lambda f: oracle)],
                         "cross-fitted g": [rel_term(z, view, rel, fits.__getitem__)],
                         "view gradients": [grad_term(z, view, slopes)]}
                terms["cross-fitted g + gradients"] = (terms["cross-fitted g"]
                                                       + terms["view gradients"])
                w, b = adjusted(z, y, view, y0[c], terms[name])
                ws.append(w)
                coefficients[name].append(b)
            out.append(torch.stack(ws))
        print(f"class {c} done at {time.perf_counter() - start:.0f} s", flush=True)
    table = []
    for name, pairs in rows.items():
        a = torch.stack([p_[0] for p_ in pairs])
        b = torch.stack([p_[1] for p_ in pairs])
        table.append({"estimator": name, **agreement(a, b),
                      "b": [statistics.median(x) for x in zip(*coefficients[name])]
                      if name in coefficients else None})
        print(json.dumps(table[-1]), flush=True)
    result = {"layer": LAYER, "classes": classes, "samples_per_class": args.samples,
              "photos_per_class": args.photos, "seconds": time.perf_counter() - start,
              "rows": table, "command": "python -m experiments.estimators.adjusted "
              + " ".join(sys.argv[1:] if argv is None else argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
