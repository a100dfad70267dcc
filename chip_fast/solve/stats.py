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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

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


@dataclass(frozen=True)
class FoldMoments:
    """Exact mask moments of samples 0..n-1 of a run, per fold (``rng.fold_of``)."""
    n: int
    count: torch.Tensor   # (F,) int64 samples per fold
    s1: torch.Tensor      # (F, K) int64 sum z
    s2: torch.Tensor      # (F, K, K) int64 sum z z^T

    def of(self, folds: Sequence[int] | None = None
           ) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(samples, sum z, sum z z^T) of the samples in ``folds`` (default all)."""
        if folds is None:
            return self.n, self.s1.sum(0), self.s2.sum(0)
        idx = list(folds)
        return int(self.count[idx].sum()), self.s1[idx].sum(0), self.s2[idx].sum(0)


# The fit of a finished job, its held-out split and its stability estimate all read the same
# per-fold moments, and an until-stable job reads them again at every stage: the last few are
# kept (bounded in bytes), and a larger n extends the largest smaller one of the same masks.
_FOLD_CACHE: "OrderedDict[tuple, FoldMoments]" = OrderedDict()
_FOLD_CACHE_BYTES = 1 << 29


def fold_moments(seed: int, n: int, channels: int, p_keep: float, design: str = "independent",
                 folds: int = 1, device: torch.device | str = "cpu") -> FoldMoments:
    """The exact per-fold mask moments of samples 0..n-1 (``FoldMoments``)."""
    key = (seed, channels, float(p_keep), design, folds, str(torch.device(device)))
    if (key, n) in _FOLD_CACHE:
        _FOLD_CACHE.move_to_end((key, n))
        return _FOLD_CACHE[(key, n)]
    start = max((m for (k, m) in _FOLD_CACHE if k == key and m <= n), default=0)
    base = _FOLD_CACHE.get((key, start))
    samples = torch.arange(start, n, device=device)
    fold = rng.fold_of(samples, folds, design)
    count = torch.zeros(folds, dtype=torch.int64, device=device)
    s1 = torch.zeros(folds, channels, dtype=torch.int64, device=device)
    s2 = torch.zeros(folds, channels, channels, dtype=torch.int64, device=device)
    for f in range(folds):
        part = samples[fold == f]
        count[f] = len(part)
        s1[f], s2[f] = mask_moments_of(seed, part, channels, p_keep, design=design, folds=folds)
    if base is not None:
        count, s1, s2 = count + base.count, s1 + base.s1, s2 + base.s2
    out = FoldMoments(n, count, s1, s2)
    _FOLD_CACHE[(key, n)] = out
    while sum(m.s2.numel() * 8 for m in _FOLD_CACHE.values()) > _FOLD_CACHE_BYTES \
            and len(_FOLD_CACHE) > 1:
        _FOLD_CACHE.popitem(last=False)
    return out


def exact_covariances(sum_beta: torch.Tensor, n: int | torch.Tensor, p_keep: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, r) of the mask distribution itself, for a layer whose every sample's response is
    linear in its mask with known coefficients (the exact estimator): ``sum_beta`` (C, K) sums
    those coefficients over the n samples, so r = Cov(z) beta with Cov(z) = p(1 - p) I, the
    population of independent Bernoulli(p) masks (every design has the same). The Lasso on
    them is the limit every sampled run converges to."""
    var = p_keep * (1 - p_keep)
    k = sum_beta.shape[1]
    gram = torch.eye(k, dtype=torch.float64, device=sum_beta.device) * var
    n = torch.as_tensor(n, dtype=torch.float64, device=sum_beta.device)
    return gram, sum_beta.to(torch.float64) * (var / n.reshape(-1, 1))

