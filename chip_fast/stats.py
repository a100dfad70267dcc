"""Streamed sufficient statistics of the sparse regression (METHOD.md, Stage 1).

Per class c, over its samples i = 0..N-1 with keep masks z_i (shared by all classes) and
responses y_ci, the Lasso needs only
    G   = 1/N sum_i (z_i - zbar)(z_i - zbar)^T        (K, K), one matrix for all classes
    r_c = 1/N sum_i (z_i - zbar)(y_ci - ybar_c)        (K,)
so a run keeps integer mask counts (exact, hence identical however the work is split) and, per
class, float64 sums of y and of z * y. Nothing of size samples x channels is ever held.
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


def response_sums_reference(masks: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                            n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row-group float64 sums: (sum_i z_i * y_i  (n_rows, K), sum_i y_i  (n_rows,)).

    masks: (T, K) bool; y: (T,) responses; rows: (T,) group (class slot) of each sample.
    """
    y64 = y.to(torch.float64)
    szy = torch.zeros(n_rows, masks.shape[1], dtype=torch.float64, device=y.device)
    szy.index_add_(0, rows, masks.to(torch.float64) * y64[:, None])
    sy = torch.zeros(n_rows, dtype=torch.float64, device=y.device)
    sy.index_add_(0, rows, y64)
    return szy, sy


def response_sums(y: torch.Tensor, rows: torch.Tensor, n_rows: int, *, seed: int,
                  samples: torch.Tensor, p_keep: float, channels: int,
                  masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``response_sums_reference``. On CUDA a Triton kernel regenerates the masks from their keys
    (seed, samples, p_keep) instead of reading them; the PyTorch path needs ``masks``."""
    from .backend import use_triton
    if use_triton(y):
        from .kernels.reweight import response_sums_triton
        return response_sums_triton(seed, samples, p_keep, channels, y, rows, n_rows)
    if masks is None:
        raise ValueError("the PyTorch path of response_sums needs the masks")
    return response_sums_reference(masks, y, rows, n_rows)


def covariances(sum_z: torch.Tensor, sum_zz: torch.Tensor, sum_zy: torch.Tensor,
                sum_y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G (K, K), r (C, K)) in float64 from the streamed sums of ``n`` samples per class."""
    zbar = sum_z.to(torch.float64) / n
    gram = sum_zz.to(torch.float64) / n - torch.outer(zbar, zbar)
    ybar = sum_y / n
    r = sum_zy / n - ybar[:, None] * zbar[None, :]
    return gram, r
