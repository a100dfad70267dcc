"""Streamed sufficient statistics of the sparse regression (METHOD.md, Stage 1).

Per class c, over its samples i = 0..N-1 with keep masks z_i (shared by all classes) and
responses y_ci, the Lasso needs only
    G   = 1/N sum_i (z_i - zbar)(z_i - zbar)^T        (K, K), one matrix for all classes
    r_c = 1/N sum_i (z_i - zbar)(y_ci - ybar_c)        (K,)
so a run keeps integer mask counts (exact, hence identical however the work is split) and, per
class, float64 sums of y and of z * y. Nothing of size samples x channels is ever held.

This module owns the mask moments and the covariances built from the streamed sums; the sums of
the responses are the op ``chip_fast.response_sums`` (reference and kernel dispatch), which this
module may not duplicate.
"""
from __future__ import annotations

import torch

from . import rng


def mask_moments(seed: int, n_samples: int, channels: int, p_keep: float,
                 chunk: int = 4096, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact integer sums over samples 0..n-1: (sum z (K,), sum z z^T (K, K)), int64."""
    s1 = torch.zeros(channels, dtype=torch.int64, device=device)
    s2 = torch.zeros(channels, channels, dtype=torch.float64, device=device)
    for start in range(0, n_samples, chunk):
        samples = torch.arange(start, min(start + chunk, n_samples), device=device)
        z = rng.keep_masks(seed, samples, channels, p_keep).to(torch.float64)
        s1 += z.sum(0).to(torch.int64)
        # Counts below 2**53 are exact in float64, so this product is exact integer arithmetic.
        s2 += z.t() @ z
    return s1, s2.round().to(torch.int64)


def covariances(sum_z: torch.Tensor, sum_zz: torch.Tensor, sum_zy: torch.Tensor,
                sum_y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G (K, K), r (C, K)) in float64 from the streamed sums of ``n`` samples per class."""
    zbar = sum_z.to(torch.float64) / n
    gram = sum_zz.to(torch.float64) / n - torch.outer(zbar, zbar)
    ybar = sum_y / n
    r = sum_zy / n - ybar[:, None] * zbar[None, :]
    return gram, r
