"""Would spending a class's samples unevenly over its views cut the noise? (Neyman allocation:
view v gets samples in proportion to the spread of its own residual, and its sums are weighted
back, so the estimand, every view weighted alike, is unchanged.)

    python -m experiments.estimators.allocation [--classes 3] [--pairs 8]

Per class, every view gets ``pairs`` antithetic mask pairs; the response is the engine's (the
logit minus p_keep times the view's unperturbed logit y0); the pooled least-squares fit on all
samples is removed, and each view's residual RMS s_v is what its samples add to the weights'
noise. With n_v proportional to s_v the variance falls by mean(s^2) / mean(s)^2 at the same
number of samples (with n_v proportional to a proxy q_v: mean(s^2) / (mean(q) mean(s^2 / q)));
the report gives that factor and how well cheap proxies (|y0|, the view's mean activation)
predict s_v, since an allocation must be chosen before the samples.
"""
from __future__ import annotations

import argparse
import json

import torch

from .__main__ import P, RESULTS, activations, model_and_source


def view_residuals(tail, a, c, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view: the residual RMS after the pooled linear fit, and the unperturbed response."""
    v, k = a.shape[0], a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    z = (torch.rand(v, pairs, k, generator=gen) < P).float()
    z = torch.stack([z, 1 - z], 2).reshape(v, 2 * pairs, k)
    with torch.inference_mode():
        y0 = torch.cat([tail(a[i:i + 64])[:, c] for i in range(0, v, 64)]).double()
        ys = []
        for i in range(v):
            x = (a[i:i + 1] * z[i, :, :, None, None]).contiguous(memory_format=torch.channels_last)
            ys.append(tail(x)[:, c].double())
    y = torch.stack(ys) - P * y0[:, None]                       # (v, 2 pairs)
    x = torch.cat([torch.ones(v * 2 * pairs, 1), z.reshape(-1, k) - P], 1).double()
    fit = torch.linalg.lstsq(x, y.reshape(-1, 1)).solution
    res = (y.reshape(-1) - (x @ fit)[:, 0]).reshape(v, 2 * pairs)
    return res.pow(2).mean(1).sqrt(), y0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--pairs", type=int, default=8)
    args = p.parse_args(argv)
    model, source = model_and_source()
    classes = source.classes[:args.classes]
    tail, acts = activations(model, source, classes, 300)
    out = {}
    for c in classes:
        s, y0 = view_residuals(tail, acts[c], c, args.pairs, seed=c)
        act = acts[c].double().mean((1, 2, 3))
        corr = lambda u: float(torch.corrcoef(torch.stack([s, u]))[0, 1])
        gain = lambda q: float(s.pow(2).mean() / (q.mean() * (s.pow(2) / q).mean()))
        out[str(c)] = {"views": len(s), "gain": gain(s), "s_cv": float(s.std() / s.mean()),
                       "r_s_vs_abs_y0": corr(y0.abs()), "r_s_vs_mean_activation": corr(act),
                       "gain_if_by_abs_y0": gain(y0.abs().clamp(min=1e-3)),
                       "gain_if_by_mean_activation": gain(act)}
        print(c, json.dumps(out[str(c)]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "allocation.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
