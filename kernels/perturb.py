"""Fused perturbation: T perturbed activation tensors and their keep masks in one launch.

Reference: ``chip_fast.perturb.perturb_reference``. The masks and the fill noise are regenerated
in-kernel from Philox4x32-10 with exactly the counter layout of ``chip_fast.rng`` (see its module
docstring), so nothing random is read from memory and the masks are bit-identical to
``rng.keep_masks``. Philox is written out here with plain uint32 arithmetic (``tl.umulhi`` for the
high word) instead of ``tl.randint``, whose counter/key conventions are Triton internals that may
change between versions.

32-bit values that may exceed 2**31 (key words, the keep threshold) are passed as int32 bit
patterns and bitcast to uint32 in the kernel: a Python int >= 2**31 would otherwise become an
int64 kernel argument and the uint32 comparisons would silently turn signed/64-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from chip_fast import rng

_FILL_CODES = {"noise": 0, "zero": 1, "mean": 2}


# --------------------------------------------------------------------------------------------
# Philox4x32-10 and Box-Muller, shared with kernels/reweight.py
# --------------------------------------------------------------------------------------------
@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of uint32 counter blocks (c0..c3) under the uint32 key (k0, k1).

    Same round function as ``chip_fast.rng.philox4x32`` (Random123): the multiplier constants
    are Python ints < 2**32, which Triton types as uint32, so every product wraps mod 2**32.
    """
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def uniform_from_u32(w):
    """``rng.uniform_from_u32``: top 24 bits, centred in their cell, as float32 in (0, 1)."""
    return ((w >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0)


@triton.jit
def box_muller(w0, w1):
    """``rng.box_muller``: two standard normals from two uint32 words (float32)."""
    u0 = uniform_from_u32(w0)
    u1 = uniform_from_u32(w1)
    r = tl.sqrt(-2.0 * tl.log(u0))
    theta = 6.283185307179586 * u1
    return r * tl.cos(theta), r * tl.sin(theta)


def u32_as_i32(x: int) -> int:
    """The int32 with the bit pattern of the uint32 ``x`` (to pass it as an i32 kernel argument)."""
    if not 0 <= x < 1 << 32:
        raise ValueError(f"not a uint32: {x}")
    return x - (1 << 32) if x >= 1 << 31 else x


def check_index(index: torch.Tensor, bound: int | None, name: str, device: torch.device
                ) -> torch.Tensor:
    """1-D integer index on ``device`` with values in [0, bound) (unchecked when ``bound`` is
    None), as contiguous int64.

    The kernels gather with these indices, so an out-of-range value would read out of bounds;
    checking costs one small device-to-host read.
    """
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {index.dtype}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device}, expected {device}")
    if bound is not None and index.numel():
        lo, hi = (int(x) for x in torch.aminmax(index))
        if lo < 0 or hi >= bound:
            raise IndexError(f"{name} has values in [{lo}, {hi}], outside [0, {bound})")
    return index.to(torch.int64).contiguous()


# --------------------------------------------------------------------------------------------
# Perturbation kernel
# --------------------------------------------------------------------------------------------
@triton.jit
def _fill_quarter(a_row, o_row, e, row_ok, E, keep, fill):
    """Write out[t, k, e] = acts[v, k, e] where kept else ``fill``, for one quarter of the quads.

    Disabled channels never read their activations (the load is masked by ``keep``).
    """
    m = row_ok[:, None] & (e < E)[None, :]
    a = tl.load(a_row + e[None, :], mask=m & keep[:, None], other=0.0)
    res = tl.where(keep[:, None], a, fill.to(a.dtype))
    tl.store(o_row + e[None, :], res, mask=m)


@triton.jit(do_not_specialize=["key0", "key1", "threshold"])
def _perturb_kernel(acts_ptr, view_ptr, class_ptr, sample_ptr, mu_ptr, sigma_ptr,
                    out_ptr, mask_ptr, K, E, key0, key1, threshold,
                    FILL: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr):
    # One program: one sample t and BLOCK_C channels, looping over the E spatial elements in
    # quads of 4 (one Philox call gives the noise of 4 consecutive elements, as in rng.fill_noise).
    t = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = k < K
    k0 = key0.to(tl.uint32, bitcast=True)
    k1 = key1.to(tl.uint32, bitcast=True)
    thr = threshold.to(tl.uint32, bitcast=True)

    v = tl.load(view_ptr + t)
    s = tl.load(sample_ptr + t).to(tl.uint32)
    cls = tl.load(class_ptr + t)

    # Keep mask of (t, k): counter (sample, k // 4, 0, TAG_MASK << 28), word k % 4. Computed once
    # per (sample, channel) here and stored for the statistics.
    zero = tl.zeros([BLOCK_C], dtype=tl.uint32)
    m0, m1, m2, m3 = philox4x32_10(zero + s, (k // 4).to(tl.uint32), zero,
                                   zero + (1 << 28), k0, k1)
    j = k % 4
    word = tl.where(j == 0, m0, tl.where(j == 1, m1, tl.where(j == 2, m2, m3)))
    keep = word < thr
    tl.store(mask_ptr + t * K + k, keep.to(tl.int8), mask=row_ok)

    a_row = acts_ptr + (v * K + k[:, None]) * E
    o_row = out_ptr + (t * K + k[:, None]) * E
    mu = tl.load(mu_ptr + k, mask=row_ok, other=0.0)
    sigma = tl.load(sigma_ptr + k, mask=row_ok, other=0.0)
    # Skip the Philox and Box-Muller work for blocks without a disabled channel (with BLOCK_C == 1,
    # for large maps, that is every kept channel).
    n_drop = tl.sum((~keep & row_ok).to(tl.int32), axis=0)
    # Noise counter (sample, channel, quad, (class & 0x0FFFFFFF) | TAG_NOISE << 28).
    c3 = ((cls & 0x0FFFFFFF) | (2 << 28)).to(tl.uint32)
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
        _fill_quarter(a_row, o_row, e, row_ok, E, keep, f0)
        _fill_quarter(a_row, o_row, e + 1, row_ok, E, keep, f1)
        _fill_quarter(a_row, o_row, e + 2, row_ok, E, keep, f2)
        _fill_quarter(a_row, o_row, e + 3, row_ok, E, keep, f3)


def perturb_triton(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                   samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                   mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``perturb_reference`` in one launch: (T, K, *spatial) activations and (T, K) bool masks.

    Masks are bit-identical to ``rng.keep_masks``; noise matches ``rng.fill_noise`` to float32
    rounding of log/cos/sin (~1e-6 relative).
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
    view = check_index(view, v_count, "view", device)
    classes = check_index(classes, None, "classes", device)  # only its low 28 bits are used
    samples = check_index(samples, 1 << 32, "samples", device)
    for name, stat in (("mu", mu), ("sigma", sigma)):
        if stat.shape != (k,):
            raise ValueError(f"{name} must have shape ({k},), got {tuple(stat.shape)}")
        if stat.device != device:
            raise ValueError(f"{name} is on {stat.device}, expected {device}")
    mu = mu.to(torch.float32).contiguous()
    sigma = sigma.to(torch.float32).contiguous()
    key0, key1 = rng.seed_key(seed)
    threshold = rng.keep_threshold(p_keep)
    acts = acts.contiguous()

    out = torch.empty((t, k, *spatial), dtype=acts.dtype, device=device)
    masks = torch.empty((t, k), dtype=torch.uint8, device=device)
    if t == 0 or k == 0:
        return out, masks.view(torch.bool)
    e = out[0, 0].numel()
    quads = max(1, triton.cdiv(e, 4))
    block_q = min(triton.next_power_of_2(quads), 256)
    # Big maps: one channel per program, so whole kept channels skip the noise generation;
    # small maps: several channels per program so each program has ~1k elements of work.
    block_c = 1 if block_q >= 256 else min(triton.next_power_of_2(k), max(1, 256 // block_q))
    grid = (t, triton.cdiv(k, block_c))
    _perturb_kernel[grid](acts, view, classes, samples, mu, sigma, out, masks, k, e,
                          u32_as_i32(key0), u32_as_i32(key1), u32_as_i32(threshold),
                          FILL=_FILL_CODES[fill], BLOCK_C=block_c, BLOCK_Q=block_q)
    return out, masks.view(torch.bool)
