"""CHIP maps (Stage 2): ReLU(sum_k W[c, k] A_k) for P (image, class) pairs, bilinearly upsampled
(align_corners=False, PyTorch's rule) and min-max normalised.

Reference: ``chip_fast.ops.class_maps.upsample_normalize_reference(class_maps_reference(...))``;
``chip_fast.ops.class_maps.class_maps`` dispatches here on CUDA. Two launches:
1. ``_class_maps_kernel``: the weighted channel sum + ReLU of every pair at the layer's own
   resolution (h, w), into a small float32 scratch buffer (P, h*w).
2. ``_upsample_normalize_kernel``: one program per map; a first pass interpolates the upsampled
   map tile by tile and keeps its min and max, a second pass interpolates again and writes the
   normalised values. Re-interpolating (4 cached loads per pixel) is cheaper than writing and
   re-reading the unnormalised (H, W) map, so the output is written once.
The min and max have to be those of the *upsampled* map (bilinear interpolation does not reach
the low-resolution extrema in general), which is why normalisation cannot be fused into kernel 1.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .launch import check_index


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
    # (chip_fast.ops.class_maps.normalize_maps).
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


def class_maps_triton(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
                      class_index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample_normalize_reference(class_maps_reference(...), size)``: (P, H, W) float32.

    acts: (B, K, h, w) on the device; weights: (C, K) (moved to acts' device if needed, as
    ``chip_fast.ops.class_maps.class_maps`` does); image_index, class_index: (P,) on acts' device.
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
