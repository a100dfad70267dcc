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


@triton.jit(do_not_specialize=["key0", "key1", "threshold", "pos0", "bounds0", "y_stride",
                               "base_scale", "bits", "folds"])
def _response_sums_kernel(sample_ptr, y_ptr, bounds_ptr, szy_ptr, sy_ptr, syy_ptr, K, S,
                          key0, key1, threshold, order_ptr, class_ptr, view_ptr, base_ptr,
                          pos0, bounds0, y_stride, base_scale, bits, folds,
                          MASK_TAG: tl.constexpr,
                          DESIGN_TAG: tl.constexpr, DESIGN: tl.constexpr,
                          Y_MODE: tl.constexpr, BASE: tl.constexpr,
                          ACCUMULATE: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_Q: tl.constexpr):
    # Program (row r, split s, block of BLOCK_Q channel quads). The samples of row r are the
    # sorted positions bounds[r]:bounds[r+1] (of the batch at pos0, bounds at bounds0); split s
    # takes its s-th contiguous slice.
    # Y_MODE 0: y_ptr holds y in sorted order (response_sums_triton). 1: y (T,) in batch order,
    # read at order[i]. 2: a (T, C) response matrix, read at (order[i], class[i]): the engine
    # hands the tail's logits over as they are. BASE: minus base_scale * base[view[i]] (the
    # view's unperturbed response). ACCUMULATE: add into the outputs (a unit's batches).
    r = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    qb = tl.program_id(2)
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)
    start = tl.load(bounds_ptr + bounds0 + r)
    end = tl.load(bounds_ptr + bounds0 + r + 1)
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
        smp = tl.load(sample_ptr + pos0 + i, mask=ok, other=0).to(tl.uint32)
        if Y_MODE == 0:
            y = tl.load(y_ptr + i, mask=ok, other=0.0)
        elif Y_MODE == 1:
            y = tl.load(y_ptr + tl.load(order_ptr + pos0 + i, mask=ok, other=0), mask=ok,
                        other=0.0)
        else:
            row_of = tl.load(order_ptr + pos0 + i, mask=ok, other=0)
            col = tl.load(class_ptr + pos0 + i, mask=ok, other=0)
            y = tl.load(y_ptr + row_of * y_stride + col, mask=ok, other=0.0)
        if BASE:
            v = tl.load(view_ptr + pos0 + i, mask=ok, other=0)
            y = y - base_scale * tl.load(base_ptr + v, mask=ok, other=0.0)
        y = y.to(tl.float64)  # padding rows add 0
        keep0, keep1, keep2, keep3 = keep_quads(smp, qu, zero, k0, k1, thr, bits, folds,
                                                MASK_TAG, DESIGN_TAG, DESIGN)
        yb = y[:, None]
        acc0 += tl.sum(tl.where(keep0, yb, 0.0), axis=0)
        acc1 += tl.sum(tl.where(keep1, yb, 0.0), axis=0)
        acc2 += tl.sum(tl.where(keep2, yb, 0.0), axis=0)
        acc3 += tl.sum(tl.where(keep3, yb, 0.0), axis=0)
        acc_y += y
        acc_yy += y * y

    row = szy_ptr + (r * S + s) * K
    c = 4 * q
    sum_y = tl.sum(acc_y, axis=0)
    sum_yy = tl.sum(acc_yy, axis=0)
    if ACCUMULATE:  # each element has one owner program: no atomics, a fixed order
        acc0 = tl.load(row + c, mask=c < K, other=0.0) + acc0
        acc1 = tl.load(row + c + 1, mask=c + 1 < K, other=0.0) + acc1
        acc2 = tl.load(row + c + 2, mask=c + 2 < K, other=0.0) + acc2
        acc3 = tl.load(row + c + 3, mask=c + 3 < K, other=0.0) + acc3
        sum_y = tl.load(sy_ptr + r * S + s) + sum_y
        sum_yy = tl.load(syy_ptr + r * S + s) + sum_yy
    tl.store(row + c, acc0, mask=c < K)
    tl.store(row + c + 1, acc1, mask=c + 1 < K)
    tl.store(row + c + 2, acc2, mask=c + 2 < K)
    tl.store(row + c + 3, acc3, mask=c + 3 < K)
    if qb == 0:
        tl.store(sy_ptr + r * S + s, sum_y)
        tl.store(syy_ptr + r * S + s, sum_yy)


BLOCK_T = 32   # samples per step of a program


def _splits(t: int, n_rows: int, block_t: int = BLOCK_T) -> int:
    """Splits per row: enough programs to fill a GPU when there are few rows, none when a split
    would hold less than ~4 sample blocks. A function of (T, n_rows) only, so deterministic."""
    per_row = t / max(n_rows, 1)
    return int(max(1, min(64, per_row // (4 * block_t), 256 // max(n_rows, 1))))


def response_sums_triton(key: tuple[int, int], threshold: int, mask_tag: int,
                         samples: torch.Tensor, channels: int, y: torch.Tensor,
                         rows: torch.Tensor, n_rows: int, validate: bool = True,
                         design: tuple[int, int, int, int] = (0, 0, 0, 1)
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference(rng.keep_masks(seed, samples, channels, p_keep), y, rows,
    n_rows)`` without materialising the masks: (sum z*y (n_rows, K), sum y (n_rows,),
    sum y^2 (n_rows,)), float64.

    key, threshold: the uint32 Philox key words and keep threshold of (seed, p_keep)
    (``rng.seed_key``, ``rng.keep_threshold``); mask_tag: ``rng.MASK_TAG_WORD``;
    ``design``: (DESIGN index, design bits, DESIGN_TAG word, folds) of the mask design
    (``rng.design_args``). ``validate=False`` skips the index range checks, which read the device.
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

    block_t, block_q = BLOCK_T, 32
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
    # order/class/view/base are unused with Y_MODE=0 and BASE=False: any pointer will do.
    _response_sums_kernel[grid](sorted_samples, sorted_y, bounds, szy, sy, syy, channels, s,
                                key0, key1, threshold, bounds, bounds, bounds, sorted_y, 0, 0, 1,
                                0.0, design[1], design[3], MASK_TAG=mask_tag,
                                DESIGN_TAG=design[2], DESIGN=design[0], Y_MODE=0, BASE=False,
                                ACCUMULATE=False,
                                BLOCK_T=block_t, BLOCK_Q=block_q)
    if s == 1:
        return szy[:, 0], sy[:, 0], syy[:, 0]
    return szy.sum(1), sy.sum(1), syy.sum(1)


def batch_plan(rows: torch.Tensor, n_rows: int, batch: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                     int]:
    """The index work of ``response_sums_triton`` done once for all the batches of a unit, on
    the host: for each batch of ``batch`` consecutive rows (the last may be shorter), the
    positions of its rows stably sorted by row (``order``, (T,), within the batch) and its
    bucket bounds (``bounds``, (n_batches, n_rows + 1)); and the splits per row, fixed by the
    full batch so that every batch of the unit adds into the same accumulators."""
    t = rows.shape[0]
    n_full = t // batch
    orders, bounds = [], []
    edges = torch.arange(n_rows + 1, dtype=rows.dtype)
    for part, size in ((rows[:n_full * batch], batch), (rows[n_full * batch:], t - n_full * batch)):
        if size == 0:
            continue
        sorted_rows, order = torch.sort(part.view(-1, size), dim=1, stable=True)
        orders.append(order.flatten())
        bounds.append(torch.searchsorted(sorted_rows, edges.repeat(len(sorted_rows), 1)))
    if not orders:
        return (torch.zeros(0, dtype=torch.int64),
                torch.zeros(0, n_rows + 1, dtype=torch.int64), 1)
    return torch.cat(orders), torch.cat(bounds), _splits(batch, n_rows)


def response_sums_accumulate(key: tuple[int, int], threshold: int, mask_tag: int,
                             plan: tuple[torch.Tensor, ...], batch_index: int, batch: int,
                             responses: torch.Tensor, base: torch.Tensor | None,
                             base_scale: float, sums: tuple[torch.Tensor, ...],
                             design: tuple[int, int, int, int] = (0, 0, 0, 1)) -> None:
    """Add batch ``batch_index`` of a unit into its sums with one launch and no other device
    work: ``sums`` = (sum z*y (n_rows, S, K), sum y (n_rows, S), sum y^2 (n_rows, S)),
    float64, S the plan's splits. ``plan`` = (order, bounds, samples, classes, views): order
    and bounds of ``batch_plan``, the rows' samples, classes and views in sorted order, all on
    the device (made once per unit, so nothing here builds a tensor). ``responses``: the
    batch's (T, C) response matrix, row i's response in the column of its class, or its (T,)
    responses; ``base`` (V,): minus ``base_scale`` times its view's entry (None: nothing).
    Same sums as ``response_sums_triton`` of the batch, added per split in batch order."""
    order, bounds, samples, classes, views = plan
    szy, sy, syy = sums
    n_rows, s, channels = szy.shape
    if responses.dim() == 2:
        y_mode, y_stride = 2, responses.stride(0)
        if responses.stride(1) != 1:
            raise ValueError("the response matrix must be contiguous along its classes")
    else:
        y_mode, y_stride = 1, 1
    quads = max(1, triton.cdiv(channels, 4))
    block_q = min(32, triton.next_power_of_2(quads))
    grid = (n_rows, s, triton.cdiv(quads, block_q))
    key0, key1 = (u32_as_i32(x) for x in key)
    _response_sums_kernel[grid](samples, responses, bounds, szy, sy, syy, channels, s, key0,
                                key1, u32_as_i32(threshold), order, classes, views,
                                responses if base is None else base, batch_index * batch,
                                batch_index * (n_rows + 1), y_stride, float(base_scale),
                                design[1], design[3], MASK_TAG=mask_tag, DESIGN_TAG=design[2],
                                DESIGN=design[0], Y_MODE=y_mode, BASE=base is not None,
                                ACCUMULATE=True, BLOCK_T=BLOCK_T, BLOCK_Q=block_q)
