"""Stage 1 response sums: per row group (class slot and fold), the float64 sums of z * y, of y
and of y^2 over its samples.

With the integer mask counts of ``chip_fast.solve.stats.mask_moments`` these are all the regression
needs (``chip_fast.solve.stats.covariances``, METHOD.md).

This module owns the op ``response_sums``: its PyTorch reference and the dispatch to the Triton
kernel (``chip_fast.kernels.response_sums``), which regenerates the masks from their keys instead
of reading them. It may not define random streams (the counter layout is ``rng``'s; the kernel
gets it from here as arguments) nor import triton or the kernels at module level: the PyTorch
path must run where Triton is absent.
"""
from __future__ import annotations

import torch

from .. import rng


def response_sums_reference(masks: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                            n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row-group float64 sums: (sum_i z_i * y_i  (n_rows, K), sum_i y_i  (n_rows,),
    sum_i y_i^2 (n_rows,)).

    masks: (T, K) bool; y: (T,) responses; rows: (T,) group (class slot) of each sample.
    """
    y64 = y.to(torch.float64)
    # One (rows x T) @ (T x K) product with each sample's y in its row's column: a float64 GEMM,
    # twice as fast on a CPU as scattering a (T, K) float64 copy of the masks.
    spread = torch.zeros(n_rows, len(y), dtype=torch.float64, device=y.device)
    spread[rows, torch.arange(len(y), device=y.device)] = y64
    szy = spread @ masks.to(torch.float64)
    sy = torch.zeros(n_rows, dtype=torch.float64, device=y.device)
    sy.index_add_(0, rows, y64)
    syy = torch.zeros(n_rows, dtype=torch.float64, device=y.device)
    syy.index_add_(0, rows, y64 * y64)
    return szy, sy, syy


def response_sums_kernel(seed: int, samples: torch.Tensor, p_keep: float, channels: int,
                         y: torch.Tensor, rows: torch.Tensor, n_rows: int, validate: bool = True,
                         antithetic: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference(rng.keep_masks(seed, samples, channels, p_keep), y, rows,
    n_rows)`` by the Triton kernel, whatever the device (the tests run it on CPU under Triton's
    interpreter): ``rng``'s key words, keep threshold and mask tag, handed to
    ``chip_fast.kernels.response_sums.response_sums_triton``."""
    from ..kernels.response_sums import response_sums_triton
    return response_sums_triton(rng.seed_key(seed), rng.keep_threshold(p_keep),
                                rng.MASK_TAG_WORD, samples, channels, y, rows, n_rows,
                                validate=validate, antithetic=antithetic)


def response_sums(y: torch.Tensor, rows: torch.Tensor, n_rows: int, *, seed: int,
                  samples: torch.Tensor, p_keep: float, channels: int,
                  masks: torch.Tensor | None = None, validate: bool = True,
                  antithetic: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference``. On CUDA a Triton kernel regenerates the masks from their keys
    (seed, samples, p_keep) instead of reading them; the PyTorch path needs ``masks``."""
    from .backend import use_triton
    if use_triton(y):
        return response_sums_kernel(seed, samples, p_keep, channels, y, rows, n_rows,
                                    validate=validate, antithetic=antithetic)
    if masks is None:
        raise ValueError("the PyTorch path of response_sums needs the masks")
    return response_sums_reference(masks, y, rows, n_rows)
