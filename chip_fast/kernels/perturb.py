"""Fused perturbation: T perturbed activation tensors in one launch, written once in the dtype and
layout the tail consumes (e.g. bf16 channels-last on CUDA).

Registers (tools/compile_check.py, ptxas): 40-92 per thread, no spills with Triton 3.8. With
Triton 3.6, _perturb_kernel spills 4 bytes (one stack word) in 4 of its configurations: float64
activations written as bf16 channels-last (launched only for a float64 model with bf16 tails),
and float32 in and out, channels-first, orthogonal design, maps of at most 64 positions on
sm_90 (a sampled 7x7 or 8x8 layer with float32 tails). A 4-byte stack slot per thread, left as
is (not measured on a GPU).

Reference: ``chip_fast.ops.perturb.perturb_reference``; ``chip_fast.ops.perturb`` dispatches here on CUDA.
The masks and the fill noise are regenerated in-kernel from Philox4x32-10 (``philox.py``), so
nothing random is read from memory and the masks are bit-identical to ``rng.keep_masks``.

The counter layout is ``chip_fast.rng``'s, received as arguments rather than imported (this
package may not import chip_fast): the Philox key words, the keep threshold and the tag words
MASK_TAG / NOISE_TAG with the class mask CLASS_MASK of counter word c3. Key words and threshold
may exceed 2**31, so they travel as int32 bit patterns (``launch.u32_as_i32``) and are bitcast
back to uint32 in the kernel.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import check_index, u32_as_i32
from .philox import box_muller, design_block, design_keep, philox4x32_10

_FILL_CODES = {"noise": 0, "zero": 1, "mean": 2}


@triton.jit
def _fill_quarter(a_row, o_row, e, a_se, o_se, row_ok, E, keep, fill):
    """Write out[t, k, e] = acts[v, k, e] where kept else ``fill``, for one quarter of the quads.

    Disabled channels never read their activations (the load is masked by ``keep``).
    """
    m = row_ok[:, None] & (e < E)[None, :]
    a = tl.load(a_row + e[None, :] * a_se, mask=m & keep[:, None], other=0.0)
    res = tl.where(keep[:, None], a, fill.to(a.dtype))
    tl.store(o_row + e[None, :] * o_se, res.to(o_row.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["key0", "key1", "threshold", "bits", "folds"])
def _perturb_kernel(acts_ptr, view_ptr, class_ptr, sample_ptr, mu_ptr, sigma_ptr, out_ptr,
                    K, E, a_sv, a_sk, a_se, o_st, o_sk, o_se, key0, key1, threshold, bits, folds,
                    FILL: tl.constexpr, MASK_TAG: tl.constexpr, NOISE_TAG: tl.constexpr,
                    CLASS_MASK: tl.constexpr, DESIGN_TAG: tl.constexpr, DESIGN: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr):
    # One program: one sample t and BLOCK_C channels, looping over the E spatial elements in
    # quads of 4 (one Philox call gives the noise of 4 consecutive elements, as in rng.fill_noise).
    # Element e of channel k sits at k * s_k + e * s_e, so one kernel serves NCHW (s_e = 1) and
    # channels-last (s_k = 1) inputs and outputs.
    t = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = k < K
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)

    v = tl.load(view_ptr + t).to(tl.int64)
    s = tl.load(sample_ptr + t).to(tl.uint32)
    cls = tl.load(class_ptr + t)

    # Keep mask of (t, k) in design DESIGN (philox.keep_quads): counter (draw, k // 4, 0, TAG),
    # word k % 4; the draw is the sample, or its pair (sample // 2) in the antithetic design,
    # whose odd member complements; in the orthogonal design the counter is the block's and its
    # word the flip of channel k.
    zero = tl.zeros([BLOCK_C], dtype=tl.uint32)
    j = k % 4
    if DESIGN == 2:
        # (code keys named apart from the noise loop's w0..w3: a loop may not change the shape
        # of a variable it carries)
        block, row, cw2, cw3, mask, shift = design_block(zero + s, zero, k0, k1, bits, folds,
                                                         DESIGN_TAG)
        m0, m1, m2, m3 = philox4x32_10(block, (k // 4).to(tl.uint32), zero, zero + DESIGN_TAG,
                                       k0, k1)
        word = tl.where(j == 0, m0, tl.where(j == 1, m1, tl.where(j == 2, m2, m3)))
        keep = design_keep(row, cw2, cw3, mask, shift, k.to(tl.uint32), word, (zero + s) & 1)
    else:
        if DESIGN == 1:
            draw = s >> 1
        else:
            draw = s
        m0, m1, m2, m3 = philox4x32_10(zero + draw, (k // 4).to(tl.uint32), zero,
                                       zero + MASK_TAG, k0, k1)
        word = tl.where(j == 0, m0, tl.where(j == 1, m1, tl.where(j == 2, m2, m3)))
        keep = word < thr
        if DESIGN == 1:
            keep = keep != ((s & 1) == 1)

    kk = k.to(tl.int64)[:, None]
    a_row = acts_ptr + v * a_sv + kk * a_sk
    o_row = out_ptr + t * o_st + kk * o_sk
    mu = tl.load(mu_ptr + k, mask=row_ok, other=0.0)
    sigma = tl.load(sigma_ptr + k, mask=row_ok, other=0.0)
    # Skip the Philox and Box-Muller work for blocks without a disabled channel (with BLOCK_C == 1,
    # for large maps, that is every kept channel).
    n_drop = tl.sum((~keep & row_ok).to(tl.int32), axis=0)
    # Noise counter (sample, channel, quad, (class & CLASS_MASK) | NOISE_TAG).
    c3 = ((cls & CLASS_MASK) | NOISE_TAG).to(tl.uint32)
    ck = k.to(tl.uint32)

    Q = (E + 3) // 4
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        shape_zero = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.uint32)
        if FILL == 0:
            if n_drop > 0:
                w0, w1, w2, w3 = philox4x32_10(shape_zero + s, shape_zero + ck[:, None],
                                               shape_zero + q[None, :].to(tl.uint32),
                                               shape_zero + c3, k0, k1)
                n0, n1 = box_muller(w0, w1)
                n2, n3 = box_muller(w2, w3)
            else:
                n0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
                n1 = n0
                n2 = n0
                n3 = n0
            # mu + sigma * eps in float32, as the reference, then cast to the output dtype.
            f0 = mu[:, None] + sigma[:, None] * n0
            f1 = mu[:, None] + sigma[:, None] * n1
            f2 = mu[:, None] + sigma[:, None] * n2
            f3 = mu[:, None] + sigma[:, None] * n3
        elif FILL == 1:
            f0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32)
            f1 = f0
            f2 = f0
            f3 = f0
        else:
            f0 = tl.zeros([BLOCK_C, BLOCK_Q], dtype=tl.float32) + mu[:, None]
            f1 = f0
            f2 = f0
            f3 = f0
        e = 4 * q
        _fill_quarter(a_row, o_row, e, a_se, o_se, row_ok, E, keep, f0)
        _fill_quarter(a_row, o_row, e + 1, a_se, o_se, row_ok, E, keep, f1)
        _fill_quarter(a_row, o_row, e + 2, a_se, o_se, row_ok, E, keep, f2)
        _fill_quarter(a_row, o_row, e + 3, a_se, o_se, row_ok, E, keep, f3)


def _strides(x: torch.Tensor) -> tuple[int, int, int] | None:
    """(sample, channel, element) strides of a (N, K, *spatial) tensor whose spatial dims flatten
    to one stride (NCHW contiguous or channels-last), else None."""
    spatial = list(zip(x.shape[2:], x.stride()[2:]))
    step = spatial[-1][1] if spatial else 1
    expect = step
    for size, stride in reversed(spatial):
        if size > 1 and stride != expect:
            return None
        expect *= size
    return x.stride(0), x.stride(1), step


def perturb_triton(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                   samples: torch.Tensor, *, key: tuple[int, int], threshold: int,
                   mask_tag: int, noise_tag: int, class_mask: int, fill: str,
                   mu: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor | None = None,
                   channels_last: bool = False, validate: bool = True,
                   design: tuple[int, int, int, int] = (0, 0, 0, 1)) -> torch.Tensor:
    """``perturb_reference``'s activations in one launch: (T, K, *spatial).

    key, threshold: the uint32 Philox key words and keep threshold (``rng.seed_key``,
    ``rng.keep_threshold``); mask_tag, noise_tag, class_mask: the counter layout's tag words and
    class bits (``rng.MASK_TAG_WORD``, ``rng.NOISE_TAG_WORD``, ``rng.CLASS_BITS``);
    ``design``: (DESIGN index, design bits, DESIGN_TAG word, folds) of the mask design
    (``rng.design_args``). ``out``: write there (its dtype and layout, e.g. a CUDA graph's bf16
    channels-last input); else a new tensor in acts' dtype, channels-last with ``channels_last``. The keep decisions
    are bit-identical to ``rng.keep_masks``; noise matches ``rng.fill_noise`` to float32 rounding
    of log/cos/sin (~1e-6 relative). ``validate=False`` skips the index range checks, which
    read the device (the engine's indices are valid by construction).
    """
    if fill not in _FILL_CODES:
        raise ValueError(f"fill must be one of {tuple(_FILL_CODES)}, got {fill!r}")
    if acts.dim() < 2:
        raise ValueError(f"acts must be (V, K, *spatial), got shape {tuple(acts.shape)}")
    if not acts.dtype.is_floating_point:
        raise TypeError(f"acts must be floating point, got {acts.dtype}")
    device = acts.device
    v_count, k = acts.shape[0], acts.shape[1]
    spatial = tuple(acts.shape[2:])
    t = view.shape[0] if view.dim() == 1 else -1
    for name, idx in (("classes", classes), ("samples", samples)):
        if idx.dim() != 1 or idx.shape[0] != t:
            raise ValueError(f"view, classes and samples must be 1-D of one length, got "
                             f"{tuple(view.shape)}, {tuple(classes.shape)}, {tuple(samples.shape)}")
    view = check_index(view, v_count if validate else None, "view", device)
    classes = check_index(classes, None, "classes", device)  # only its class_mask bits are used
    samples = check_index(samples, 1 << 32 if validate else None, "samples", device)
    for name, stat in (("mu", mu), ("sigma", sigma)):
        if stat.shape != (k,):
            raise ValueError(f"{name} must have shape ({k},), got {tuple(stat.shape)}")
        if stat.device != device:
            raise ValueError(f"{name} is on {stat.device}, expected {device}")
    mu, sigma = (x if x.dtype == torch.float32 and x.is_contiguous()
                 else x.to(torch.float32).contiguous() for x in (mu, sigma))
    key0, key1 = (u32_as_i32(x) for x in key)
    threshold = u32_as_i32(threshold)
    if _strides(acts) is None:
        acts = acts.contiguous()
    if out is None:
        fmt = torch.channels_last if channels_last and acts.dim() == 4 else torch.contiguous_format
        out = torch.empty((t, k, *spatial), dtype=acts.dtype, device=device, memory_format=fmt)
    elif tuple(out.shape) != (t, k, *spatial) or out.device != device or _strides(out) is None:
        raise ValueError(f"out must be a ({t}, {k}, {spatial}) tensor on {device} in NCHW or "
                         f"channels-last layout, got {tuple(out.shape)} on {out.device}")
    if t == 0 or k == 0:
        return out
    e = math.prod(spatial)
    a_sv, a_sk, a_se = _strides(acts)
    o_st, o_sk, o_se = _strides(out)
    quads = max(1, triton.cdiv(e, 4))
    if o_sk == 1 and k > 1:
        # Channels-last: consecutive channels are consecutive addresses, so a program takes a
        # wide block of channels (coalesced stores) and a few quads.
        block_c = min(triton.next_power_of_2(k), 64)
        block_q = min(triton.next_power_of_2(quads), 8)
    else:
        block_q = min(triton.next_power_of_2(quads), 256)
        # Big maps: one channel per program, so whole kept channels skip the noise generation;
        # small maps: several channels per program so each program has ~1k elements of work.
        block_c = 1 if block_q >= 256 else min(triton.next_power_of_2(k), max(1, 256 // block_q))
    grid = (t, triton.cdiv(k, block_c))
    _perturb_kernel[grid](acts, view, classes, samples, mu, sigma, out, k, e,
                          a_sv, a_sk, a_se, o_st, o_sk, o_se, key0, key1, threshold, design[1],
                          design[3],
                          FILL=_FILL_CODES[fill], MASK_TAG=mask_tag, NOISE_TAG=noise_tag,
                          CLASS_MASK=class_mask, DESIGN_TAG=design[2], DESIGN=design[0],
                          BLOCK_C=block_c, BLOCK_Q=block_q)
    return out
