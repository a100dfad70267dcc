"""Where the sampling noise at features.14.conv.0 comes from: for a few views of one class, many
masks each, the per-view least-squares fit of the response on the mask (how linear one view's
response is) and how far the views' coefficients are from their mean (how much they differ).

    python -m experiments.estimators.heterogeneity [--views 6] [--samples 2048]
"""
from __future__ import annotations

import argparse
import json

import torch

from .__main__ import LAYER, RESULTS, first_views, model_and_source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--samples", type=int, default=2048)
    args = p.parse_args(argv)
    c, tail, a = first_views(*model_and_source(), args.views)
    gen = torch.Generator().manual_seed(0)
    betas, r2 = [], []
    for v in range(args.views):
        z = (torch.rand(args.samples, a.shape[1], generator=gen) < 0.5).float()
        with torch.inference_mode():
            y = torch.cat([tail((a[v:v + 1] * z[i:i + 128, :, None, None]).contiguous(
                memory_format=torch.channels_last))[:, c] for i in range(0, args.samples, 128)])
        x = torch.cat([torch.ones(args.samples, 1), z], 1).double()
        fit = torch.linalg.lstsq(x, y.double()[:, None]).solution[:, 0]
        r2.append(float(1 - (y.double() - x @ fit).var() / y.double().var()))
        betas.append(fit[1:])
    b = torch.stack(betas)
    mean = b.mean(0)
    result = {"layer": LAYER, "class": c, "views": args.views, "samples_per_view": args.samples,
              "within_view_r2": r2,
              "norm_of_mean_coefficients": float(mean.norm()),
              "mean_norm_of_differences": float((b - mean).norm(dim=1).mean()),
              "mean_correlation_between_views": float(torch.corrcoef(b)[
                  torch.triu(torch.ones(args.views, args.views, dtype=torch.bool), 1)].mean())}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "heterogeneity.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
