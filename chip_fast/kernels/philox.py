"""Philox4x32-10 and Box-Muller as Triton device functions, shared by the kernels that regenerate
random numbers in-kernel (``perturb``, ``perturb_means``, ``response_sums``), and the keep
decisions of the mask designs (independent, antithetic, orthogonal foldover) they share.

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
def design_row(r, w0, w1, mask, shift):
    """``rng._row_permutation``: a keyed bijection of the m-bit rows (uint32 in, uint32 out)."""
    x = (r ^ w0) & mask
    x = (x * 0xE170893D) & mask
    x = x ^ (x >> shift)
    x = (x * (w1 | 1)) & mask
    x = x ^ (x >> 1)
    x = (x * 0x0929EB3F) & mask
    return x ^ (x >> shift)


@triton.jit
def design_code(c, w2, w3, mask, shift):
    """``rng._code_permutation``: a keyed bijection of the m-bit words that keeps 0 at 0."""
    x = (c * (w2 | 1)) & mask
    x = x ^ (x >> shift)
    x = (x * 0x9E501CC3) & mask
    x = x ^ (x >> 1)
    x = (x * (w3 | 1)) & mask
    return x ^ (x >> shift)


@triton.jit
def parity(x):
    """Parity of the set bits of uint32 ``x`` (0 or 1)."""
    x = x ^ (x >> 16)
    x = x ^ (x >> 8)
    x = x ^ (x >> 4)
    x = x ^ (x >> 2)
    x = x ^ (x >> 1)
    return x & 1


@triton.jit
def design_block(sample, zero, k0, k1, bits, folds, DESIGN_TAG: tl.constexpr):
    """The orthogonal design's block of each sample (any shape, uint32, ``zero`` of its shape),
    its permuted design row and the code permutation's key words (``rng._orthogonal_masks``;
    each of the ``folds`` folds has blocks of its own): (block, row, w2, w3, mask, shift)."""
    nb = bits.to(tl.uint32)
    nf = folds.to(tl.uint32)
    mask = (zero + 1 << nb) - 1
    shift = tl.maximum(nb >> 1, 1)
    draw = sample >> 1
    local = draw // nf
    block = (local >> nb) * nf + (draw - local * nf)
    w0, w1, w2, w3 = philox4x32_10(block, zero, zero + 1, zero + DESIGN_TAG, k0, k1)
    return block, design_row(local & mask, w0, w1, mask, shift), w2, w3, mask, shift


@triton.jit
def design_keep(row, w2, w3, mask, shift, channel, flip_word, odd):
    """Keep decision of ``channel`` (uint32) in the orthogonal design: parity of the design
    row and the channel's code, xor its flip (the top bit of ``flip_word``), xor the pair's
    odd member."""
    code = design_code(channel + 1, w2, w3, mask, shift)
    return (parity(row & code) ^ (flip_word >> 31) ^ odd) == 1


@triton.jit
def keep_quads(sample, quad, zero, k0, k1, thr, bits, folds, MASK_TAG: tl.constexpr,
               DESIGN_TAG: tl.constexpr, DESIGN: tl.constexpr):
    """Keep decisions of channels 4q .. 4q + 3 for a column of samples and a row of quads q
    (broadcast to ``zero``'s shape), in design DESIGN (the index into ``rng.MASK_DESIGNS``):
    0 independent, counter (sample, q, 0, MASK_TAG) word j for channel 4q + j; 1 antithetic,
    the same counter of the pair (sample // 2), whose odd member keeps the complement;
    2 orthogonal foldover (``design_block``, ``design_keep``; ``bits`` its m, ``folds`` the
    run's folds)."""
    if DESIGN == 2:
        smp = zero + sample[:, None]
        block, row, w2, w3, mask, shift = design_block(smp, zero, k0, k1, bits, folds,
                                                       DESIGN_TAG)
        f0, f1, f2, f3 = philox4x32_10(block, zero + quad[None, :], zero, zero + DESIGN_TAG,
                                       k0, k1)
        odd = smp & 1
        c = 4 * (zero + quad[None, :])
        keep0 = design_keep(row, w2, w3, mask, shift, c, f0, odd)
        keep1 = design_keep(row, w2, w3, mask, shift, c + 1, f1, odd)
        keep2 = design_keep(row, w2, w3, mask, shift, c + 2, f2, odd)
        keep3 = design_keep(row, w2, w3, mask, shift, c + 3, f3, odd)
        return keep0, keep1, keep2, keep3
    if DESIGN == 1:
        draw = sample >> 1
    else:
        draw = sample
    w0, w1, w2, w3 = philox4x32_10(zero + draw[:, None], zero + quad[None, :], zero,
                                   zero + MASK_TAG, k0, k1)
    keep0 = w0 < thr
    keep1 = w1 < thr
    keep2 = w2 < thr
    keep3 = w3 < thr
    if DESIGN == 1:
        odd = ((sample & 1) == 1)[:, None]
        keep0 = keep0 != odd
        keep1 = keep1 != odd
        keep2 = keep2 != odd
        keep3 = keep3 != odd
    return keep0, keep1, keep2, keep3
