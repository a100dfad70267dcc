"""Philox4x32-10 and Box-Muller as Triton device functions, shared by the kernels that regenerate
random numbers in-kernel (``perturb``, ``perturb_means``, ``response_sums``), and the keep
decisions of channel quads that the last two share.

These are the kernel twins of ``chip_fast.rng.philox4x32``, ``uniform_from_u32`` and
``box_muller``: same rounds, same word-to-float mapping, so a kernel reproduces the PyTorch masks
bit for bit and the noise to float32 rounding. Philox is written out with plain uint32 arithmetic
(``tl.umulhi`` for the high word) instead of ``tl.randint``, whose counter/key conventions are
Triton internals that may change between versions.

Which counter feeds which stream (the counter layout) is not decided here: it belongs to
``chip_fast.rng``, and the kernels receive its tag words as arguments. This package may not
import chip_fast.
"""
from __future__ import annotations

import triton
import triton.language as tl


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


@triton.jit
def keep_quads(sample, quad, zero, k0, k1, thr, MASK_TAG: tl.constexpr,
               ANTITHETIC: tl.constexpr):
    """Keep decisions of channels 4q .. 4q + 3 for a column of samples and a row of quads q
    (broadcast to ``zero``'s shape): counter (draw, q, 0, MASK_TAG), word j for channel 4q + j,
    the draw being the sample or, in the antithetic design, its pair (sample // 2), whose odd
    member keeps the complement."""
    if ANTITHETIC:
        draw = sample >> 1
    else:
        draw = sample
    w0, w1, w2, w3 = philox4x32_10(zero + draw[:, None], zero + quad[None, :], zero,
                                   zero + MASK_TAG, k0, k1)
    keep0 = w0 < thr
    keep1 = w1 < thr
    keep2 = w2 < thr
    keep3 = w3 < thr
    if ANTITHETIC:
        odd = ((sample & 1) == 1)[:, None]
        keep0 = keep0 != odd
        keep1 = keep1 != odd
        keep2 = keep2 != odd
        keep3 = keep3 != odd
    return keep0, keep1, keep2, keep3

