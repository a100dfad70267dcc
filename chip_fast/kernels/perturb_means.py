"""Perturbed spatial means for affine tails: T x K values in one launch.

Reference: ``chip_fast.ops.perturb_means.perturb_means_reference``; ``chip_fast.ops.perturb_means``
dispatches here on CUDA. Per (sample, channel quad) one Philox call gives the keep masks of four
channels and, for the noise fill, a second one (another stream tag) their four fill-mean
normals; nothing random is read from memory. Masks are bit-identical to ``rng.keep_masks``, the
normals match ``rng.noise_means`` to float32 rounding of log/cos/sin.

The counter layout arrives as arguments (this package may not import chip_fast): key words and
keep threshold as int32 bit patterns, the tag words MASK_TAG / NOISE_TAG and the class bits
CLASS_MASK as constants.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import check_index, u32_as_i32
from .philox import box_muller, keep_quads, philox4x32_10

_FILL_CODES = {"noise": 0, "zero": 1, "mean": 2}


@triton.jit
def _store_lane(means_ptr, out_ptr, mu_ptr, sigma_ptr, v, t, c, t_ok, K, keep, normal,
                scale, FILL: tl.constexpr):
    """out[t, c] = means[v, c] where kept, else the fill mean, for one lane of the quads."""
    ok = t_ok[:, None] & (c < K)[None, :]
    a = tl.load(means_ptr + v[:, None] * K + c[None, :], mask=ok, other=0.0).to(tl.float32)
    mu = tl.load(mu_ptr + c, mask=c < K, other=0.0)
    if FILL == 0:
        sigma = tl.load(sigma_ptr + c, mask=c < K, other=0.0)
        fill = mu[None, :] + (sigma * scale)[None, :] * normal
    elif FILL == 1:
        fill = tl.zeros_like(a)
    else:
        fill = tl.zeros_like(a) + mu[None, :]
    tl.store(out_ptr + t[:, None] * K + c[None, :], tl.where(keep, a, fill), mask=ok)


@triton.jit(do_not_specialize=["key0", "key1", "threshold", "bits", "folds"])
def _perturb_means_kernel(means_ptr, view_ptr, class_ptr, sample_ptr, mu_ptr, sigma_ptr,
                          out_ptr, T, K, key0, key1, threshold, scale, bits, folds,
                          FILL: tl.constexpr, MASK_TAG: tl.constexpr, NOISE_TAG: tl.constexpr,
                          CLASS_MASK: tl.constexpr, DESIGN_TAG: tl.constexpr,
                          DESIGN: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_Q: tl.constexpr):
    # Program: BLOCK_T samples x BLOCK_Q channel quads (channels 4q .. 4q + 3).
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    t_ok = t < T
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)
    v = tl.load(view_ptr + t, mask=t_ok, other=0).to(tl.int64)
    s = tl.load(sample_ptr + t, mask=t_ok, other=0).to(tl.uint32)
    zero = tl.zeros([BLOCK_T, BLOCK_Q], dtype=tl.uint32)
    qu = zero + q[None, :].to(tl.uint32)
    keep0, keep1, keep2, keep3 = keep_quads(s, q.to(tl.uint32), zero, k0, k1, thr, bits, folds,
                                            MASK_TAG, DESIGN_TAG, DESIGN)
    if FILL == 0:
        # Fill means: counter (sample, quad, 0, (class & CLASS_MASK) | NOISE_TAG).
        cls = tl.load(class_ptr + t, mask=t_ok, other=0)
        c3 = ((cls & CLASS_MASK) | NOISE_TAG).to(tl.uint32)
        w0, w1, w2, w3 = philox4x32_10(zero + s[:, None], qu, zero, zero + c3[:, None], k0, k1)
        n0, n1 = box_muller(w0, w1)
        n2, n3 = box_muller(w2, w3)
    else:
        n0 = tl.zeros([BLOCK_T, BLOCK_Q], dtype=tl.float32)
        n1 = n0
        n2 = n0
        n3 = n0
    tt = t.to(tl.int64)
    c = 4 * q
    _store_lane(means_ptr, out_ptr, mu_ptr, sigma_ptr, v, tt, c, t_ok, K, keep0, n0, scale, FILL)
    _store_lane(means_ptr, out_ptr, mu_ptr, sigma_ptr, v, tt, c + 1, t_ok, K, keep1, n1, scale,
                FILL)
    _store_lane(means_ptr, out_ptr, mu_ptr, sigma_ptr, v, tt, c + 2, t_ok, K, keep2, n2, scale,
                FILL)
    _store_lane(means_ptr, out_ptr, mu_ptr, sigma_ptr, v, tt, c + 3, t_ok, K, keep3, n3, scale,
                FILL)


def perturb_means_triton(means: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                         samples: torch.Tensor, *, key: tuple[int, int], threshold: int,
                         mask_tag: int, noise_tag: int, class_mask: int, fill: str,
                         mu: torch.Tensor, sigma: torch.Tensor, scale: float,
                         validate: bool = True, design: tuple[int, int, int, int] = (0, 0, 0, 1)
                         ) -> torch.Tensor:
    """(T, K) float32 perturbed spatial means (``perturb_means_reference`` without masks).

    means: (V, K) spatial means of the views; scale: 1 / sqrt(E) as float32 (the std of a mean
    of E unit normals); key, threshold, tags and class bits: the counter layout of
    ``chip_fast.rng`` (see the module doc); ``design``: (DESIGN index, design bits, DESIGN_TAG
    word) of the mask design (``rng.design_args``). ``validate=False`` skips the index range checks,
    which read the device.
    """
    if fill not in _FILL_CODES:
        raise ValueError(f"fill must be one of {tuple(_FILL_CODES)}, got {fill!r}")
    if means.dim() != 2 or not means.dtype.is_floating_point:
        raise ValueError(f"means must be a (V, K) float tensor, got {tuple(means.shape)} "
                         f"{means.dtype}")
    device = means.device
    v_count, k = means.shape
    t = view.shape[0] if view.dim() == 1 else -1
    if classes.shape != (t,) or samples.shape != (t,):
        raise ValueError(f"view, classes and samples must be 1-D of one length, got "
                         f"{tuple(view.shape)}, {tuple(classes.shape)}, {tuple(samples.shape)}")
    view = check_index(view, v_count if validate else None, "view", device)
    classes = check_index(classes, None, "classes", device)
    samples = check_index(samples, 1 << 32 if validate else None, "samples", device)
    for name, stat in (("mu", mu), ("sigma", sigma)):
        if stat.shape != (k,) or stat.device != device:
            raise ValueError(f"{name} must be ({k},) on {device}, got {tuple(stat.shape)} on "
                             f"{stat.device}")
    out = torch.empty((t, k), dtype=torch.float32, device=device)
    if t == 0 or k == 0:
        return out
    quads = triton.cdiv(k, 4)
    # The orthogonal design computes a code per (sample, channel) beside the Philox words; with
    # the noise fill, 32 quads per program spilled registers on sm_90 (tools/compile_check.py).
    block_q = min(triton.next_power_of_2(quads), 16 if design[0] == 2 else 32)
    block_t = 32
    grid = (triton.cdiv(t, block_t), triton.cdiv(quads, block_q))
    key0, key1 = (u32_as_i32(x) for x in key)
    _perturb_means_kernel[grid](means.contiguous(), view, classes, samples,
                                mu.float().contiguous(), sigma.float().contiguous(), out, t, k,
                                key0, key1, u32_as_i32(threshold), scale, design[1], design[3],
                                FILL=_FILL_CODES[fill], MASK_TAG=mask_tag, NOISE_TAG=noise_tag,
                                CLASS_MASK=class_mask, DESIGN_TAG=design[2], DESIGN=design[0],
                                BLOCK_T=block_t, BLOCK_Q=block_q)
    return out
