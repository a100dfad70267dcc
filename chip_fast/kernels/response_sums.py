"""Response sums with in-kernel masks: per row group (class slot), sum_i z_i y_i and sum_i y_i in
float64, regenerating the keep masks z_i from Philox (``philox.py``) instead of reading a (T, K)
mask tensor.

Reference: ``chip_fast.ops.response_sums.response_sums_reference`` of ``rng.keep_masks``;
``chip_fast.ops.response_sums`` dispatches here on CUDA. The mask counters are ``chip_fast.rng``'s
(counter (sample, k // 4, 0, MASK_TAG), word k % 4), received as arguments: the Philox key words,
the keep threshold and the tag word MASK_TAG (this package may not import chip_fast). Key words
and threshold travel as int32 bit patterns (``launch.u32_as_i32``), bitcast back in the kernel.

Deterministic by construction, no atomics: samples are stably sorted by row on the host, each
row's run is cut into S contiguous splits (S depends only on T and n_rows, never on the data),
and each program owns (row, split, channel block) and adds up its samples in order with fixed
block sizes. The S partial sums are then added by ``torch.sum`` over that axis, which is a
deterministic reduction. So the result is bitwise reproducible for the same inputs and launch
configuration (it differs from the CPU reference only by float64 summation order).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import check_index, u32_as_i32
from .philox import keep_quads


@triton.jit(do_not_specialize=["key0", "key1", "threshold"])
def _response_sums_kernel(sample_ptr, y_ptr, bounds_ptr, szy_ptr, sy_ptr, syy_ptr, K, S,
                          key0, key1, threshold, MASK_TAG: tl.constexpr,
                          ANTITHETIC: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_Q: tl.constexpr):
    # Program (row r, split s, block of BLOCK_Q channel quads). The samples of row r are
    # sorted_samples[bounds[r]:bounds[r+1]]; split s takes its s-th contiguous slice.
    r = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    qb = tl.program_id(2)
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)
    start = tl.load(bounds_ptr + r)
    end = tl.load(bounds_ptr + r + 1)
    per = (end - start + S - 1) // S
    lo = tl.minimum(start + s * per, end)
    hi = tl.minimum(lo + per, end)

    # Quad q holds channels 4q..4q+3: one Philox call (counter (sample, q, 0, MASK_TAG)) gives
    # the masks of all four, so every (sample, channel) mask is generated exactly once.
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qu = q.to(tl.uint32)
    acc0 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc1 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc2 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc3 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc_y = tl.zeros([BLOCK_T], dtype=tl.float64)
    acc_yy = tl.zeros([BLOCK_T], dtype=tl.float64)
    zero = tl.zeros([BLOCK_T, BLOCK_Q], dtype=tl.uint32)
    for i0 in range(lo, hi, BLOCK_T):
        i = i0 + tl.arange(0, BLOCK_T)
        ok = i < hi
        smp = tl.load(sample_ptr + i, mask=ok, other=0).to(tl.uint32)
        y = tl.load(y_ptr + i, mask=ok, other=0.0).to(tl.float64)  # padding rows add 0
        keep0, keep1, keep2, keep3 = keep_quads(smp, qu, zero, k0, k1, thr, MASK_TAG,
                                                ANTITHETIC)
        yb = y[:, None]
        acc0 += tl.sum(tl.where(keep0, yb, 0.0), axis=0)
        acc1 += tl.sum(tl.where(keep1, yb, 0.0), axis=0)
        acc2 += tl.sum(tl.where(keep2, yb, 0.0), axis=0)
        acc3 += tl.sum(tl.where(keep3, yb, 0.0), axis=0)
        acc_y += y
        acc_yy += y * y

    row = szy_ptr + (r * S + s) * K
    c = 4 * q
    tl.store(row + c, acc0, mask=c < K)
    tl.store(row + c + 1, acc1, mask=c + 1 < K)
    tl.store(row + c + 2, acc2, mask=c + 2 < K)
    tl.store(row + c + 3, acc3, mask=c + 3 < K)
    if qb == 0:
        tl.store(sy_ptr + r * S + s, tl.sum(acc_y, axis=0))
        tl.store(syy_ptr + r * S + s, tl.sum(acc_yy, axis=0))


def _splits(t: int, n_rows: int, block_t: int) -> int:
    """Splits per row: enough programs to fill a GPU when there are few rows, none when a split
    would hold less than ~4 sample blocks. A function of (T, n_rows) only, so deterministic."""
    per_row = t / max(n_rows, 1)
    return int(max(1, min(64, per_row // (4 * block_t), 256 // max(n_rows, 1))))


def response_sums_triton(key: tuple[int, int], threshold: int, mask_tag: int,
                         samples: torch.Tensor, channels: int, y: torch.Tensor,
                         rows: torch.Tensor, n_rows: int, validate: bool = True,
                         antithetic: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference(rng.keep_masks(seed, samples, channels, p_keep), y, rows,
    n_rows)`` without materialising the masks: (sum z*y (n_rows, K), sum y (n_rows,),
    sum y^2 (n_rows,)), float64.

    key, threshold: the uint32 Philox key words and keep threshold of (seed, p_keep)
    (``rng.seed_key``, ``rng.keep_threshold``); mask_tag: ``rng.MASK_TAG_WORD``;
    ``antithetic``: the paired mask design (``rng.keep_masks``).
    ``validate=False`` skips the index range checks, which read the device.
    """
    if not isinstance(channels, int) or channels < 0:
        raise ValueError(f"channels must be a non-negative int, got {channels!r}")
    if not isinstance(n_rows, int) or n_rows < 0:
        raise ValueError(f"n_rows must be a non-negative int, got {n_rows!r}")
    if y.dim() != 1 or not y.dtype.is_floating_point:
        raise ValueError(f"y must be a 1-D floating tensor, got {tuple(y.shape)} {y.dtype}")
    device = y.device
    t = y.shape[0]
    if samples.shape != (t,) or rows.shape != (t,):
        raise ValueError(f"samples, y and rows must all be ({t},), got {tuple(samples.shape)}, "
                         f"{tuple(y.shape)}, {tuple(rows.shape)}")
    samples = check_index(samples, 1 << 32 if validate else None, "samples", device)
    rows = check_index(rows, n_rows if validate else None, "rows", device)
    key0, key1 = (u32_as_i32(x) for x in key)
    threshold = u32_as_i32(threshold)

    block_t, block_q = 32, 32
    s = _splits(t, n_rows, block_t)
    szy = torch.empty((n_rows, s, channels), dtype=torch.float64, device=device)
    sy = torch.empty((n_rows, s), dtype=torch.float64, device=device)
    syy = torch.empty((n_rows, s), dtype=torch.float64, device=device)
    if n_rows == 0:
        return szy[:, 0], sy[:, 0], syy[:, 0]
    # Stable sort: within a row, samples keep their given order (part of the determinism).
    sorted_rows, order = torch.sort(rows, stable=True)
    bounds = torch.searchsorted(sorted_rows, torch.arange(n_rows + 1, device=device))
    sorted_samples = samples.index_select(0, order)
    sorted_y = y.index_select(0, order).contiguous()
    quads = max(1, triton.cdiv(channels, 4))
    block_q = min(block_q, triton.next_power_of_2(quads))
    grid = (n_rows, s, triton.cdiv(quads, block_q))
    _response_sums_kernel[grid](sorted_samples, sorted_y, bounds, szy, sy, syy, channels, s,
                                key0, key1, threshold, MASK_TAG=mask_tag,
                                ANTITHETIC=bool(antithetic), BLOCK_T=block_t, BLOCK_Q=block_q)
    if s == 1:
        return szy[:, 0], sy[:, 0], syy[:, 0]
    return szy.sum(1), sy.sum(1), syy.sum(1)
