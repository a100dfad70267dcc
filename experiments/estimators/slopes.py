"""Which cheap per-view slope predicts how a view's own coefficients differ from the pooled ones,
at MobileNetV2 features.14.conv.0: the ceiling of any control variate built from it.

    python -m experiments.estimators.slopes [--views 8] [--samples 4096] [--grads 32]

Each view's coefficients come from its own least-squares fit on many masks (the randomised
orthogonal foldover design), twice, on two independent halves, so that the product of the two
halves' deviations estimates the heterogeneity without the fits' own noise. A candidate slope q_v
(the mask gradient at the unperturbed view, at the half-scaled view, or the mean over m random
masks) would remove the share rho^2 of the heterogeneity a control variate ``b q_v . (z - p)``
with the best single coefficient b can remove, where rho is the correlation, summed over views,
between the deviations d_v and q_v - mean q. "scale" is an oracle: each view's own multiple of
the pooled coefficients (how much of the heterogeneity is a per-view scale).
"""
from __future__ import annotations

import argparse
import json

import torch

from experiments.estimators.__main__ import LAYER, RESULTS, first_views, model_and_source
from experiments.estimators.designs import orthogonal_masks
from experiments.estimators.trapezoid import gradients_at, mask_gradients, midpoint_gradients


def view_fit(tail, a, c, z) -> torch.Tensor:
    with torch.inference_mode():
        y = torch.cat([tail((a * z[i:i + 128, :, None, None]).contiguous(
            memory_format=torch.channels_last))[:, c] for i in range(0, len(z), 128)]).double()
    x = torch.cat([torch.ones(len(z), 1, dtype=torch.float64), z.double()], 1)
    return torch.linalg.lstsq(x, y[:, None]).solution[1:, 0]


def share(dev_a, dev_b, q) -> float:
    """rho^2: the share of the heterogeneity (rows of dev_a, dev_b: two independent estimates
    of each view's deviation) that the best multiple of q's deviations explains."""
    qd = q - q.mean(0)
    het = float((dev_a * dev_b).sum())
    cross = float((0.5 * (dev_a + dev_b) * qd).sum())
    return cross * cross / (het * float((qd * qd).sum()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--grads", type=int, default=32)
    args = p.parse_args(argv)
    c, tail, a = first_views(*model_and_source(), args.views)
    k = a.shape[1]
    halves = []
    for h in range(2):
        halves.append(torch.stack([view_fit(tail, a[v:v + 1], c, orthogonal_masks(
            args.samples // 2, k, 100 * h + v, True)) for v in range(args.views)]))
    pooled = 0.5 * (halves[0] + halves[1]).mean(0)
    dev = [b - b.mean(0) for b in halves]
    het = float((dev[0] * dev[1]).sum()) / args.views
    scale = torch.stack([pooled * float((0.5 * (halves[0][v] + halves[1][v])) @ pooled)
                         / float(pooled @ pooled) for v in range(args.views)])
    grads = mask_gradients(tail, a, c, args.grads, 11)
    candidates = {"scale of the pooled coefficients (oracle)": scale,
                  "gradient at the unperturbed view": gradients_at(tail, a, c,
                                                                   torch.ones(a.shape[:2])),
                  "gradient at the half-scaled view": midpoint_gradients(tail, a, c)}
    # Free covariates: the pooled coefficients scaled per channel by how active the channel is on
    # the view (dropping a channel the view barely uses can cost it little).
    act = a.double().mean((2, 3))
    rel = torch.where(act.mean(0) > 0, act / act.mean(0).clamp_min(1e-12), torch.zeros_like(act))
    for gamma in (0.5, 1.0):
        candidates[f"pooled x (view's channel mean / its mean)^{gamma}"] = pooled * rel ** gamma
    for m in sorted({1, 4, args.grads // 4, args.grads}):
        candidates[f"mean gradient at {m} random masks"] = grads[:m].mean(0)
    result = {"layer": LAYER, "class": c, "views": args.views, "samples_per_view": args.samples,
              "pooled_norm": float(pooled.norm()), "heterogeneity_norm": het ** 0.5,
              "fit_noise_norm": float(((halves[0] - halves[1]).pow(2).sum(1).mean() / 4) ** 0.5),
              "share_explained": {name: share(dev[0], dev[1], q) for name, q in candidates.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "slopes.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
