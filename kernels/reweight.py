"""Channel reweighting kernels: CHIP maps (Stage 2) and the response statistics (Stage 1).

(a) ``layer_maps_triton``: ReLU(sum_k W[c, k] A_k) for P (image, class) pairs, bilinearly
    upsampled (align_corners=False, PyTorch's rule) and min-max normalised. Two launches:
    1. ``_class_maps_kernel``: the weighted channel sum + ReLU of every pair at the layer's own
       resolution (h, w), into a small float32 scratch buffer (P, h*w).
    2. ``_upsample_normalize_kernel``: one program per map; a first pass interpolates the
       upsampled map tile by tile and keeps its min and max, a second pass interpolates again
       and writes the normalised values. Re-interpolating (4 cached loads per pixel) is cheaper
       than writing and re-reading the unnormalised (H, W) map, so the output is written once.
    The min and max have to be those of the *upsampled* map (bilinear interpolation does not
    reach the low-resolution extrema in general), which is why normalisation cannot be fused
    into kernel 1.

(b) ``response_sums_triton``: per row group (class slot), sum_i z_i y_i and sum_i y_i in float64,
    regenerating the keep masks z_i in-kernel from Philox (same counters as ``rng.keep_masks``)
    instead of reading a (T, K) mask tensor.
    Deterministic by construction, no atomics: samples are stably sorted by row on the host,
    each row's run is cut into S contiguous splits (S depends only on T and n_rows, never on the
    data), and each program owns (row, split, channel block) and adds up its samples in order with
    fixed block sizes. The S partial sums are then added by ``torch.sum`` over that axis, which is
    a deterministic reduction. So the result is bitwise reproducible for the same inputs and
    launch configuration (it differs from the CPU reference only by float64 summation order).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from chip_fast import rng

from .perturb import check_index, philox4x32_10, u32_as_i32


# --------------------------------------------------------------------------------------------
# (a) CHIP maps
# --------------------------------------------------------------------------------------------
@triton.jit
def _class_maps_kernel(acts_ptr, w_ptr, img_ptr, cls_ptr, low_ptr, K, HW,
                       BLOCK_K: tl.constexpr, BLOCK_HW: tl.constexpr):
    # One program: pair p, BLOCK_HW positions; loop over the channels in BLOCK_K chunks, with
    # float32 accumulation whatever the activation dtype (as the reference's .float()).
    p = tl.program_id(0).to(tl.int64)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_ok = hw < HW
    b = tl.load(img_ptr + p)
    c = tl.load(cls_ptr + p)
    acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        w = tl.load(w_ptr + c * K + k, mask=k_ok, other=0.0).to(tl.float32)
        a = tl.load(acts_ptr + (b * K + k[:, None]) * HW + hw[None, :],
                    mask=k_ok[:, None] & hw_ok[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w[:, None] * a, axis=0)
    tl.store(low_ptr + p * HW + hw, tl.maximum(acc, 0.0), mask=hw_ok)


@triton.jit
def _bilinear(src, o, h, w, W, scale_h, scale_w):
    """PyTorch's bilinear sample (align_corners=False) of the (h, w) map ``src`` at flat output
    positions ``o`` of a (., W) grid: source coordinate (dst + 0.5) * scale - 0.5 clamped at 0,
    the upper neighbour clamped to the last row/column."""
    y = o // W
    x = o - y * W
    sy = tl.maximum((y.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    sx = tl.maximum((x.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    y0 = tl.minimum(sy.to(tl.int32), h - 1)  # sy >= 0, so truncation is floor
    x0 = tl.minimum(sx.to(tl.int32), w - 1)
    y1 = tl.minimum(y0 + 1, h - 1)
    x1 = tl.minimum(x0 + 1, w - 1)
    ly = sy - y0.to(tl.float32)
    lx = sx - x0.to(tl.float32)
    v00 = tl.load(src + y0 * w + x0)
    v01 = tl.load(src + y0 * w + x1)
    v10 = tl.load(src + y1 * w + x0)
    v11 = tl.load(src + y1 * w + x1)
    # Lerp form a + l * (b - a) rather than PyTorch's (1 - l) * a + l * b: equal to ~1 ulp, but
    # exact where neighbours are equal, so a constant map stays exactly constant (and normalises
    # to zeros instead of amplifying rounding noise to [0, 1]).
    top = v00 + lx * (v01 - v00)
    bottom = v10 + lx * (v11 - v10)
    return top + ly * (bottom - top)


@triton.jit
def _upsample_normalize_kernel(low_ptr, out_ptr, h, w, H, W, scale_h, scale_w,
                               BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    src = low_ptr + p * h * w
    dst = out_ptr + p * H * W
    n = H * W
    lo = tl.full([BLOCK], float("inf"), dtype=tl.float32)
    hi = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    # Pass 1: the upsampled map's extrema.
    for start in range(0, n, BLOCK):
        o = start + tl.arange(0, BLOCK)
        ok = o < n
        val = _bilinear(src, tl.where(ok, o, 0), h, w, W, scale_h, scale_w)
        lo = tl.minimum(lo, tl.where(ok, val, float("inf")))
        hi = tl.maximum(hi, tl.where(ok, val, float("-inf")))
    lo_s = tl.min(lo, axis=0)
    span = tl.max(hi, axis=0) - lo_s
    # Pass 2: re-interpolate and write (x - min) / span; a constant map becomes zeros
    # (chip_fast.maps.normalize_maps).
    safe = tl.where(span > 0, span, 1.0)
    for start in range(0, n, BLOCK):
        o = start + tl.arange(0, BLOCK)
        ok = o < n
        val = _bilinear(src, tl.where(ok, o, 0), h, w, W, scale_h, scale_w)
        res = tl.where(span > 0, (val - lo_s) / safe, 0.0)
        tl.store(dst + o, res, mask=ok)


def _f32_ratio(a: int, b: int) -> float:
    """a / b rounded once to float32, as PyTorch's scale (float)in / out."""
    return float(np.float32(a) / np.float32(b))


def layer_maps_triton(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
                      class_index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample_normalize_reference(class_maps_reference(...), size)``: (P, H, W) float32.

    acts: (B, K, h, w) on the device; weights: (C, K) (moved to acts' device if needed, as
    ``chip_fast.maps.layer_maps`` does); image_index, class_index: (P,) on acts' device.
    """
    if acts.dim() != 4:
        raise ValueError(f"acts must be (B, K, h, w), got shape {tuple(acts.shape)}")
    if not acts.dtype.is_floating_point or not weights.dtype.is_floating_point:
        raise TypeError(f"acts and weights must be floating point, got {acts.dtype}, "
                        f"{weights.dtype}")
    b_count, k, h, w = acts.shape
    if weights.dim() != 2 or weights.shape[1] != k:
        raise ValueError(f"weights must be (C, {k}), got shape {tuple(weights.shape)}")
    if len(size) != 2 or min(int(size[0]), int(size[1])) <= 0:
        raise ValueError(f"size must be two positive ints, got {size!r}")
    if h == 0 or w == 0:
        raise ValueError("acts has an empty spatial size")
    big_h, big_w = int(size[0]), int(size[1])
    device = acts.device
    if image_index.shape != class_index.shape:
        raise ValueError(f"image_index and class_index must have one shape, got "
                         f"{tuple(image_index.shape)} and {tuple(class_index.shape)}")
    image_index = check_index(image_index, b_count, "image_index", device)
    class_index = check_index(class_index, weights.shape[0], "class_index", device)
    acts = acts.contiguous()
    weights = weights.to(device).contiguous()
    p = image_index.shape[0]

    out = torch.empty((p, big_h, big_w), dtype=torch.float32, device=device)
    if p == 0:
        return out
    low = torch.empty((p, h * w), dtype=torch.float32, device=device)
    block_hw = min(triton.next_power_of_2(h * w), 128)
    block_k = min(triton.next_power_of_2(max(k, 1)), 32)
    _class_maps_kernel[(p, triton.cdiv(h * w, block_hw))](
        acts, weights, image_index, class_index, low, k, h * w,
        BLOCK_K=block_k, BLOCK_HW=block_hw)
    block = min(triton.next_power_of_2(big_h * big_w), 1024)
    _upsample_normalize_kernel[(p,)](
        low, out, h, w, big_h, big_w, _f32_ratio(h, big_h), _f32_ratio(w, big_w), BLOCK=block)
    return out


# --------------------------------------------------------------------------------------------
# (b) Response sums with in-kernel masks
# --------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["key0", "key1", "threshold"])
def _response_sums_kernel(sample_ptr, y_ptr, bounds_ptr, szy_ptr, sy_ptr, K, S,
                          key0, key1, threshold,
                          BLOCK_T: tl.constexpr, BLOCK_Q: tl.constexpr):
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

    # Quad q holds channels 4q..4q+3: one Philox call (counter (sample, q, 0, TAG_MASK << 28))
    # gives the masks of all four, so every (sample, channel) mask is generated exactly once.
    q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qu = q.to(tl.uint32)
    acc0 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc1 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc2 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc3 = tl.zeros([BLOCK_Q], dtype=tl.float64)
    acc_y = tl.zeros([BLOCK_T], dtype=tl.float64)
    zero = tl.zeros([BLOCK_T, BLOCK_Q], dtype=tl.uint32)
    for i0 in range(lo, hi, BLOCK_T):
        i = i0 + tl.arange(0, BLOCK_T)
        ok = i < hi
        smp = tl.load(sample_ptr + i, mask=ok, other=0).to(tl.uint32)
        y = tl.load(y_ptr + i, mask=ok, other=0.0).to(tl.float64)  # padding rows add 0
        w0, w1, w2, w3 = philox4x32_10(zero + smp[:, None], zero + qu[None, :], zero,
                                       zero + (1 << 28), k0, k1)
        yb = y[:, None]
        acc0 += tl.sum(tl.where(w0 < thr, yb, 0.0), axis=0)
        acc1 += tl.sum(tl.where(w1 < thr, yb, 0.0), axis=0)
        acc2 += tl.sum(tl.where(w2 < thr, yb, 0.0), axis=0)
        acc3 += tl.sum(tl.where(w3 < thr, yb, 0.0), axis=0)
        acc_y += y

    row = szy_ptr + (r * S + s) * K
    c = 4 * q
    tl.store(row + c, acc0, mask=c < K)
    tl.store(row + c + 1, acc1, mask=c + 1 < K)
    tl.store(row + c + 2, acc2, mask=c + 2 < K)
    tl.store(row + c + 3, acc3, mask=c + 3 < K)
    if qb == 0:
        tl.store(sy_ptr + r * S + s, tl.sum(acc_y, axis=0))


def _splits(t: int, n_rows: int, block_t: int) -> int:
    """Splits per row: enough programs to fill a GPU when there are few rows, none when a split
    would hold less than ~4 sample blocks. A function of (T, n_rows) only, so deterministic."""
    per_row = t / max(n_rows, 1)
    return int(max(1, min(64, per_row // (4 * block_t), 256 // max(n_rows, 1))))


def response_sums_triton(seed: int, samples: torch.Tensor, p_keep: float, channels: int,
                         y: torch.Tensor, rows: torch.Tensor, n_rows: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``response_sums_reference(rng.keep_masks(seed, samples, channels, p_keep), y, rows,
    n_rows)`` without materialising the masks: ((n_rows, K) float64, (n_rows,) float64)."""
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
    samples = check_index(samples, 1 << 32, "samples", device)
    rows = check_index(rows, n_rows, "rows", device)
    key0, key1 = rng.seed_key(seed)
    threshold = rng.keep_threshold(p_keep)

    block_t, block_q = 32, 32
    s = _splits(t, n_rows, block_t)
    szy = torch.empty((n_rows, s, channels), dtype=torch.float64, device=device)
    sy = torch.empty((n_rows, s), dtype=torch.float64, device=device)
    if n_rows == 0:
        return szy[:, 0], sy[:, 0]
    # Stable sort: within a row, samples keep their given order (part of the determinism).
    sorted_rows, order = torch.sort(rows, stable=True)
    bounds = torch.searchsorted(sorted_rows, torch.arange(n_rows + 1, device=device))
    sorted_samples = samples.index_select(0, order)
    sorted_y = y.index_select(0, order).contiguous()
    quads = max(1, triton.cdiv(channels, 4))
    block_q = min(block_q, triton.next_power_of_2(quads))
    grid = (n_rows, s, triton.cdiv(quads, block_q))
    _response_sums_kernel[grid](sorted_samples, sorted_y, bounds, szy, sy, channels, s,
                                u32_as_i32(key0), u32_as_i32(key1), u32_as_i32(threshold),
                                BLOCK_T=block_t, BLOCK_Q=block_q)
    if s == 1:
        return szy[:, 0], sy[:, 0]
    return szy.sum(1), sy.sum(1)
