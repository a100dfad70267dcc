"""Streamed sufficient statistics of the sparse regression (METHOD.md, Stage 1).

Per class c, over its samples i = 0..N-1 with keep masks z_i (shared by all classes) and
responses y_ci, the Lasso needs only
    G   = 1/N sum_i (z_i - zbar)(z_i - zbar)^T        (K, K), one matrix for all classes
    r_c = 1/N sum_i (z_i - zbar)(y_ci - ybar_c)        (K,)
so a run keeps integer mask counts (exact, hence identical however the work is split) and, per
class, float64 sums of y and of z * y. Nothing of size samples x channels is ever held.

This module owns the mask moments and the covariances built from the streamed sums; the sums of
the responses are the op ``chip_fast.ops.response_sums`` (reference and kernel dispatch), which this
module may not duplicate.
"""
from __future__ import annotations

import contextlib

import torch

from .. import rng


@contextlib.contextmanager
def _no_tf32():
    """Full float32 products on GPUs: TF32 would round the mask counts."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def mask_moments(seed: int, n_samples: int, channels: int, p_keep: float,
                 chunk: int = 4096, device: torch.device | str = "cpu",
                 design: str = "independent", folds: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact integer sums over samples 0..n-1: (sum z (K,), sum z z^T (K, K)), int64."""
    return mask_moments_of(seed, torch.arange(n_samples, device=device), channels, p_keep, chunk,
                           design=design, folds=folds)


def covariances(sum_z: torch.Tensor, sum_zz: torch.Tensor, sum_zy: torch.Tensor,
                sum_y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G (K, K), r (C, K)) in float64 from the streamed sums of ``n`` samples per class."""
    zbar = sum_z.to(torch.float64) / n
    gram = sum_zz.to(torch.float64) / n - torch.outer(zbar, zbar)
    ybar = sum_y / n
    r = sum_zy / n - ybar[:, None] * zbar[None, :]
    return gram, r


def mask_moments_of(seed: int, samples: torch.Tensor, channels: int, p_keep: float,
                    chunk: int = 4096, design: str = "independent", folds: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact integer sums over the given per-class sample indices (any subset, e.g. one fold
    ``arange(f, n, folds)``): (sum z (K,), sum z z^T (K, K)), int64, on ``samples``' device.

    The masks are regenerated from their keys (seed, sample, channel), so the moments of any
    subset of a run's samples are exact without storing a mask."""
    if chunk > 1 << 24:
        raise ValueError("chunk must be at most 2**24: its counts are summed in float32")
    s1 = torch.zeros(channels, dtype=torch.int64, device=samples.device)
    s2 = torch.zeros(channels, channels, dtype=torch.int64, device=samples.device)
    for part in samples.split(chunk):
        # A chunk's counts are below 2**24, so a float32 product of the 0/1 masks is exact
        # integer arithmetic (twice the speed of float64 on a CPU; TF32 is off on GPUs, it would
        # round), accumulated in int64.
        z = rng.keep_masks(seed, part, channels, p_keep, design, folds).to(torch.float32)
        s1 += z.sum(0).to(torch.int64)
        with _no_tf32():
            s2 += (z.t() @ z).round().to(torch.int64)
    return s1, s2


def exact_covariances(sum_beta: torch.Tensor, n: int, p_keep: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, r) of the mask distribution itself, for a layer whose every sample's response is
    linear in its mask with known coefficients (the exact estimator): ``sum_beta`` (C, K) sums
    those coefficients over the n samples, so r = Cov(z) beta with Cov(z) = p(1 - p) I, the
    population of independent Bernoulli(p) masks (every design has the same). The Lasso on
    them is the limit every sampled run converges to."""
    var = p_keep * (1 - p_keep)
    k = sum_beta.shape[1]
    gram = torch.eye(k, dtype=torch.float64, device=sum_beta.device) * var
    return gram, sum_beta.to(torch.float64) * (var / n)

