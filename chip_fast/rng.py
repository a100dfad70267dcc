"""Counter-based random numbers: Philox4x32-10, in plain PyTorch integer arithmetic.

Every random number of a distillation run is a pure function of (seed, class, sample, channel,
element), so any perturbation sample can be regenerated anywhere, in any order, on any worker,
and a Triton kernel can produce the same masks bit for bit (``kernels/perturb.py`` and
``kernels/response_sums.py`` use this exact counter layout). The arithmetic runs on int64 tensors
holding uint32 values, which works on every device and dtype-support level of PyTorch.

This module alone owns the counter layout. The kernels (``chip_fast.kernels``, which may not
import chip_fast) receive its pieces as arguments: the tag words and class mask below, the key
words of ``seed_key`` and the threshold of ``keep_threshold``, passed by the dispatching modules
(``chip_fast.ops.perturb``, ``chip_fast.ops.response_sums``).

Counter layout (c0, c1, c2, c3), key (seed low 32 bits, seed high 32 bits); the top 4 bits of
c3 (from TAG_SHIFT up) say which stream a counter belongs to, the low 28 (CLASS_BITS) the class:

- keep mask of (sample i, channel k): counter (i, k // 4, 0, MASK_TAG_WORD), word k % 4.
  Masks do not depend on the class: every class sees the same mask stream, so the Gram matrix of
  the masks is shared by all classes and the solve is one batched problem (METHOD.md).
  Antithetic design (``antithetic=True``, p_keep 0.5): samples 2j and 2j + 1 are a pair; both
  draw counter (j, k // 4, 0, MASK_TAG_WORD), and the odd one keeps exactly the channels the
  even one drops. A pair shares its view and its fold (``fold_of``), so the part of a response
  that is even in the mask (its view's offset, pairwise interactions of channels) cancels
  inside every pair and never reaches the covariances.
- fill noise of (class c, sample i, channel k, element e): counter (i, k, e // 4,
  (c & CLASS_BITS) | NOISE_TAG_WORD), Box-Muller on words (0, 1) and (2, 3), element e takes
  normal e % 4.
- augmentation of (class c, view v): counter (v, 0, 0, (c & CLASS_BITS) | AUGMENT_TAG_WORD).
- fill noise *mean* of (class c, sample i, channel k), for tails that see the layer only through
  its spatial mean (METHOD.md): counter (i, k // 4, 0, (c & CLASS_BITS) | NOISE_MEAN_TAG_WORD),
  Box-Muller on words (0, 1) and (2, 3), channel k takes normal k % 4.
"""
from __future__ import annotations

import math

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

TAG_MASK = 1
TAG_NOISE = 2
TAG_AUGMENT = 3
TAG_NOISE_MEAN = 4
TAG_SHIFT = 28
CLASS_BITS = (1 << TAG_SHIFT) - 1  # 0x0FFFFFFF
# The tags as they sit in counter word c3. All are < 2**31, so a kernel types them as int32
# constants like any literal.
MASK_TAG_WORD = TAG_MASK << TAG_SHIFT
NOISE_TAG_WORD = TAG_NOISE << TAG_SHIFT
AUGMENT_TAG_WORD = TAG_AUGMENT << TAG_SHIFT
NOISE_MEAN_TAG_WORD = TAG_NOISE_MEAN << TAG_SHIFT

_U32 = 0xFFFFFFFF


def seed_key(seed: int) -> tuple[int, int]:
    """Split a non-negative seed of up to 64 bits into the two 32-bit Philox key words."""
    if not isinstance(seed, int) or seed < 0 or seed >= 1 << 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return seed & _U32, (seed >> 32) & _U32


def philox4x32(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of broadcastable int64 counter words (values in [0, 2**32)).

    Returns the four output words as int64 tensors holding uint32 values.
    """
    k0, k1 = seed_key(seed)
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    c0, c1, c2, c3 = (t.to(torch.int64).expand(shape) for t in (c0, c1, c2, c3))
    for _ in range(PHILOX_ROUNDS):
        # The 64-bit product of two uint32 values wraps around in int64 arithmetic, which
        # PyTorch does modulo 2**64 on every backend (tests/test_rng.py checks the known
        # answers); masking after the arithmetic shift recovers the unsigned high word.
        # In-place updates of the fresh products halve the memory traffic of this loop, which
        # is most of the cost of noise generation on a CPU.
        p0 = c0 * PHILOX_M0
        p1 = c2 * PHILOX_M1
        n0 = (p1 >> 32).bitwise_and_(_U32).bitwise_xor_(c1).bitwise_xor_(k0)
        n2 = (p0 >> 32).bitwise_and_(_U32).bitwise_xor_(c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = n0, p1.bitwise_and_(_U32), n2, p0.bitwise_and_(_U32)
        k0 = (k0 + PHILOX_W0) & _U32
        k1 = (k1 + PHILOX_W1) & _U32
    return c0, c1, c2, c3


def keep_threshold(p_keep: float) -> int:
    """The integer t with P(u32 < t) = p_keep (to 2**-32): a channel is kept when its word < t."""
    if not 0.0 < p_keep < 1.0:
        raise ValueError(f"p_keep must be in (0, 1), got {p_keep}")
    return min(int(round(p_keep * 2.0**32)), _U32)


def keep_masks(seed: int, samples: torch.Tensor, channels: int, p_keep: float,
               antithetic: bool = False) -> torch.Tensor:
    """Bernoulli(p_keep) keep masks z of shape (len(samples), channels), as bool.

    ``samples`` are per-class sample indices; the mask of a sample is the same for every class,
    so a batch that holds a sample for several classes draws its mask once. ``antithetic``: the
    paired design of the module doc (odd samples complement their even partner).
    """
    draws = samples >> 1 if antithetic else samples
    unique, inverse = torch.unique(draws, return_inverse=True)
    if len(unique) < len(draws):
        masks = _keep_masks(seed, unique, channels, p_keep).index_select(0, inverse)
    else:
        masks = _keep_masks(seed, draws, channels, p_keep)
    if antithetic:
        masks ^= (samples & 1).bool()[:, None]
    return masks


def keep_masks_range(seed: int, start: int, stop: int, channels: int, p_keep: float,
                     antithetic: bool = False, device: torch.device | str = "cpu"
                     ) -> torch.Tensor:
    """``keep_masks`` of the samples ``start .. stop - 1``, each drawn once, without reading
    anything back from the device (``keep_masks`` sizes its unique draws on the host): what a
    unit draws once for all its classes."""
    first = start >> 1 if antithetic else start
    last = (stop - 1) >> 1 if antithetic else stop - 1
    draws = _keep_masks(seed, torch.arange(first, last + 1, device=device), channels, p_keep)
    samples = torch.arange(start, stop, device=device)
    if not antithetic:
        return draws
    return draws.index_select(0, (samples >> 1) - first) ^ (samples & 1).bool()[:, None]


def fold_of(samples: torch.Tensor, folds: int, antithetic: bool = False) -> torch.Tensor:
    """The fold of each sample: i % folds, or (i // 2) % folds in the antithetic design (a pair
    stays in one fold, so every fold is a sample of whole pairs)."""
    return (samples >> 1 if antithetic else samples) % folds


def pair_start(samples: torch.Tensor, antithetic: bool = False) -> torch.Tensor:
    """The first sample of each sample's pair (itself without the antithetic design): what a
    pair shares, its view, is keyed by it."""
    return (samples >> 1) << 1 if antithetic else samples


def _keep_masks(seed: int, samples: torch.Tensor, channels: int, p_keep: float) -> torch.Tensor:
    device = samples.device
    n_blocks = (channels + 3) // 4
    blocks = torch.arange(n_blocks, device=device, dtype=torch.int64)[None, :]
    s = samples.to(torch.int64)[:, None]
    zero = torch.zeros((), dtype=torch.int64, device=device)
    tag = torch.full((), MASK_TAG_WORD, dtype=torch.int64, device=device)
    threshold = keep_threshold(p_keep)
    out = torch.empty(len(samples), 4 * n_blocks, dtype=torch.bool, device=device)
    rows = max(1, len(samples) if device.type != "cpu" else _NOISE_CHUNK // n_blocks)
    for i in range(0, len(samples), rows):   # in cache-sized chunks on a CPU, as fill_noise
        words = philox4x32(s[i:i + rows], blocks, zero, tag, seed)
        out[i:i + rows] = torch.stack(words, dim=-1).flatten(1) < threshold
    return out[:, :channels]


def uniform_from_u32(u: torch.Tensor) -> torch.Tensor:
    """Map uint32 words to float32 uniforms in (0, 1): the top 24 bits, centred in their cell."""
    return ((u >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def box_muller(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals from two uint32 words."""
    u0 = uniform_from_u32(w0)
    u1 = uniform_from_u32(w1)
    r = torch.sqrt(-2.0 * torch.log(u0))
    theta = (2.0 * math.pi) * u1
    return r * torch.cos(theta), r * torch.sin(theta)


# Counters per chunk of noise generation: the ten Philox rounds then work in the CPU's cache
# instead of streaming every intermediate through memory (docs/design.md, "Measured choices").
_NOISE_CHUNK = 1 << 16


def fill_noise(seed: int, classes: torch.Tensor, samples: torch.Tensor, channels: torch.Tensor,
               elements: int) -> torch.Tensor:
    """Standard normal noise for (class, sample, channel) triples, shape (len(classes), elements).

    ``classes``, ``samples`` and ``channels`` are 1-D tensors of the same length: one row per
    disabled channel of one perturbation sample.
    """
    device = classes.device
    n_blocks = (elements + 3) // 4
    blocks = torch.arange(n_blocks, device=device, dtype=torch.int64)[None, :]
    c3 = ((classes.to(torch.int64) & CLASS_BITS) | NOISE_TAG_WORD)[:, None]
    s = samples.to(torch.int64)[:, None]
    k = channels.to(torch.int64)[:, None]
    out = torch.empty(len(classes), 4 * n_blocks, dtype=torch.float32, device=device)
    rows = max(1, len(classes) if device.type != "cpu" else _NOISE_CHUNK // n_blocks)
    for i in range(0, len(classes), rows):
        w0, w1, w2, w3 = philox4x32(s[i:i + rows], k[i:i + rows], blocks, c3[i:i + rows], seed)
        n0, n1 = box_muller(w0, w1)
        n2, n3 = box_muller(w2, w3)
        out[i:i + rows] = torch.stack((n0, n1, n2, n3), dim=-1).flatten(1)
    return out[:, :elements]


def noise_means(seed: int, classes: torch.Tensor, samples: torch.Tensor, channels: int
                ) -> torch.Tensor:
    """Standard normals of (class, sample, channel) for every channel, shape (T, channels):
    ``classes`` and ``samples`` are (T,); the draw that stands for the spatial mean of a
    disabled channel's fill noise (scaled by sigma / sqrt(elements) by the caller)."""
    device = samples.device
    n_blocks = (channels + 3) // 4
    blocks = torch.arange(n_blocks, device=device, dtype=torch.int64)[None, :]
    c3 = ((classes.to(torch.int64) & CLASS_BITS) | NOISE_MEAN_TAG_WORD)[:, None]
    s = samples.to(torch.int64)[:, None]
    zero = torch.zeros((), dtype=torch.int64, device=device)
    out = torch.empty(len(samples), 4 * n_blocks, dtype=torch.float32, device=device)
    rows = max(1, len(samples) if device.type != "cpu" else _NOISE_CHUNK // n_blocks)
    for i in range(0, len(samples), rows):
        w0, w1, w2, w3 = philox4x32(s[i:i + rows], blocks, zero, c3[i:i + rows], seed)
        n0, n1 = box_muller(w0, w1)
        n2, n3 = box_muller(w2, w3)
        out[i:i + rows] = torch.stack((n0, n1, n2, n3), dim=-1).flatten(1)
    return out[:, :channels]


def augment_words(seed: int, classes: torch.Tensor, views: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four uint32 words per (class, view), to draw that view's augmentation."""
    c3 = (classes.to(torch.int64) & CLASS_BITS) | AUGMENT_TAG_WORD
    zero = torch.zeros((), dtype=torch.int64, device=classes.device)
    return philox4x32(views.to(torch.int64), zero, zero, c3, seed)
