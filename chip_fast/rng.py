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
  Antithetic design (``design="antithetic"``, p_keep 0.5): samples 2j and 2j + 1 are a pair;
  both draw counter (j, k // 4, 0, MASK_TAG_WORD), and the odd one keeps exactly the channels
  the even one drops. A pair shares its view and its fold (``fold_of``), so the part of a
  response that is even in the mask (its view's offset, pairwise interactions of channels)
  cancels inside every pair and never reaches the covariances.
- orthogonal foldover design (``design="orthogonal"``, p_keep 0.5): pairs as above, whose even
  member is a row of a randomised Sylvester-Hadamard design instead of an independent draw.
  Each of the run's F folds (pair j in fold j mod F) has designs of its own, so the folds stay
  independent replicates, as the stability estimates from their sums assume: with m =
  ``design_bits(K)`` (2^m > K) and the fold's own pair index l = j // F, pair j is row
  r = l mod 2^m of block b = (l // 2^m) F + j mod F, and keeps channel k when
  parity(row_b(r) & code_b(k + 1)) xor flip_b(k) is 1, where row_b is a
  keyed permutation of the 2^m rows, code_b a keyed permutation of the m-bit words that fixes 0
  (so the K codes are distinct and nonzero) and flip_b(k) a fair coin: counter
  (b, 0, 1, DESIGN_TAG_WORD) keys the two permutations (words 0, 1 the rows', 2, 3 the codes'),
  counter (b, k // 4, 0, DESIGN_TAG_WORD) word k % 4 holds the flip in its top bit. The flip
  makes every row uniform on {0, 1}^K, like an independent fair mask, so the estimand does not
  change; within a whole block every channel is kept exactly half the time and every pair of
  channels a quarter, so the block's Gram matrix is the population's exactly (a run of
  2 F 2^m samples per class completes a block in every fold).
- fill noise of (class c, sample i, channel k, element e): counter (i, k, e // 4,
  (c & CLASS_BITS) | NOISE_TAG_WORD), Box-Muller on words (0, 1) and (2, 3), element e takes
  normal e % 4.
- augmentation of (class c, view v): counter (v, 0, 0, (c & CLASS_BITS) | AUGMENT_TAG_WORD).
- fill noise *mean* of (class c, sample i, channel k), for tails that see the layer only through
  its spatial mean (METHOD.md): counter (i, k // 4, 0, (c & CLASS_BITS) | NOISE_MEAN_TAG_WORD),
  Box-Muller on words (0, 1) and (2, 3), channel k takes normal k % 4.
"""
from __future__ import annotations

import functools
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
TAG_DESIGN = 5
TAG_SHIFT = 28
CLASS_BITS = (1 << TAG_SHIFT) - 1  # 0x0FFFFFFF
# The tags as they sit in counter word c3. All are < 2**31, so a kernel types them as int32
# constants like any literal.
MASK_TAG_WORD = TAG_MASK << TAG_SHIFT
NOISE_TAG_WORD = TAG_NOISE << TAG_SHIFT
AUGMENT_TAG_WORD = TAG_AUGMENT << TAG_SHIFT
NOISE_MEAN_TAG_WORD = TAG_NOISE_MEAN << TAG_SHIFT
DESIGN_TAG_WORD = TAG_DESIGN << TAG_SHIFT

# How the keep masks are drawn (module doc); the kernels receive the index as DESIGN.
MASK_DESIGNS = ("independent", "antithetic", "orthogonal")

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


def check_design(design: str, p_keep: float, folds: int = 1) -> None:
    """Refuse an unknown design, or a paired one whose complements are not as likely as the
    masks (p_keep other than 0.5)."""
    if not isinstance(folds, int) or not 1 <= folds < 1 << 16:
        raise ValueError(f"folds must be an int in [1, 65536), got {folds!r}")
    if design not in MASK_DESIGNS:
        raise ValueError(f"the mask design must be one of {MASK_DESIGNS}, got {design!r}")
    if design != "independent" and p_keep != 0.5:
        raise ValueError(f"{design} masks need p_keep 0.5 (a mask's complement must be as "
                         f"likely as the mask), got {p_keep}: use independent masks")


def design_bits(channels: int) -> int:
    """m of the orthogonal design: the fewest bits with 2^m > channels, so that the channels
    get distinct nonzero codes."""
    return max(1, int(channels).bit_length())


def design_args(design: str, channels: int, p_keep: float, folds: int = 1
                ) -> tuple[int, int, int, int]:
    """(DESIGN index, design bits, DESIGN_TAG_WORD, folds) as the kernels take them."""
    check_design(design, p_keep, folds)
    return MASK_DESIGNS.index(design), design_bits(channels), DESIGN_TAG_WORD, folds


def keep_masks(seed: int, samples: torch.Tensor, channels: int, p_keep: float,
               design: str = "independent", folds: int = 1) -> torch.Tensor:
    """Bernoulli(p_keep) keep masks z of shape (len(samples), channels), as bool.

    ``samples`` are per-class sample indices; the mask of a sample is the same for every class,
    so a batch that holds a sample for several classes draws its mask once. ``design``: how
    they are drawn (``MASK_DESIGNS``, module doc); ``folds``: the run's folds, which the
    orthogonal design keeps apart.
    """
    check_design(design, p_keep, folds)
    if design == "orthogonal":
        return _orthogonal_masks(seed, samples, channels, folds)
    antithetic = design == "antithetic"
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
                     design: str = "independent", device: torch.device | str = "cpu",
                     folds: int = 1) -> torch.Tensor:
    """``keep_masks`` of the samples ``start .. stop - 1``, each drawn once, without reading
    anything back from the device (``keep_masks`` sizes its unique draws on the host): what a
    unit draws once for all its classes."""
    check_design(design, p_keep, folds)
    samples = torch.arange(start, stop, device=device)
    if design == "orthogonal":
        return _orthogonal_masks(seed, samples, channels, folds, torch.arange(start, stop))
    if design == "independent":
        return _keep_masks(seed, samples, channels, p_keep)
    first, last = start >> 1, (stop - 1) >> 1
    draws = _keep_masks(seed, torch.arange(first, last + 1, device=device), channels, p_keep)
    return draws.index_select(0, (samples >> 1) - first) ^ (samples & 1).bool()[:, None]


def fold_of(samples: torch.Tensor, folds: int, design: str = "independent") -> torch.Tensor:
    """The fold of each sample: i % folds, or (i // 2) % folds in a paired design (a pair
    stays in one fold, so every fold is a sample of whole pairs)."""
    return (samples >> 1 if design != "independent" else samples) % folds


def pair_start(samples: torch.Tensor, design: str = "independent") -> torch.Tensor:
    """The first sample of each sample's pair (itself in the independent design): what a pair
    shares, its view, is keyed by it."""
    return (samples >> 1) << 1 if design != "independent" else samples


def _row_permutation(r: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor, mask: int, shift: int
                     ) -> torch.Tensor:
    """A keyed bijection of the m-bit rows (``kernels.philox.design_row``'s twin): xor with a key,
    odd multipliers and xor-shifts, each invertible modulo 2^m."""
    x = (r ^ w0) & mask
    x = (x * 0xE170893D) & mask
    x = x ^ (x >> shift)
    x = (x * (w1 | 1)) & mask
    x = x ^ (x >> 1)
    x = (x * 0x0929EB3F) & mask
    return x ^ (x >> shift)


def _code_permutation(c: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, mask: int,
                      shift: int) -> torch.Tensor:
    """A keyed bijection of the m-bit words that maps 0 to 0 (``kernels.philox.design_code``'s
    twin): odd multipliers and xor-shifts only, so nonzero codes stay distinct and nonzero."""
    x = (c * (w2 | 1)) & mask
    x = x ^ (x >> shift)
    x = (x * 0x9E501CC3) & mask
    x = x ^ (x >> 1)
    x = (x * (w3 | 1)) & mask
    return x ^ (x >> shift)


def _parity(x: torch.Tensor) -> torch.Tensor:
    for s in (16, 8, 4, 2, 1):
        x = x ^ (x >> s)
    return x & 1


def _design_shape(channels: int) -> tuple[int, int, int]:
    """(m, the m-bit mask, the permutations' shift) of the orthogonal design of K channels."""
    m = design_bits(channels)
    return m, (1 << m) - 1, max(1, m // 2)


def _design_block(samples: torch.Tensor, m: int, folds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the pair's index within its fold, its block) of int64 per-class sample indices."""
    draw = samples >> 1
    local = draw // folds
    return local, (local >> m) * folds + draw % folds


def _orthogonal_masks(seed: int, samples: torch.Tensor, channels: int, folds: int,
                      host: torch.Tensor | None = None) -> torch.Tensor:
    """The orthogonal design's masks; ``host``: the same samples on the CPU, where the blocks
    are read without a device read (else they are read from ``samples``)."""
    device = samples.device
    m, mask, shift = _design_shape(channels)
    s = samples.to(torch.int64)
    local, block = _design_block(s, m, folds)
    block_ids = block if host is None else _design_block(host.to(torch.int64), m, folds)[1]
    ids, w0, w1, codes, flips = _design_tables(seed, tuple(torch.unique(block_ids).tolist()),
                                               channels, str(device))
    at = torch.searchsorted(ids, block)
    row = _row_permutation(local & mask, w0.index_select(0, at), w1.index_select(0, at), mask,
                           shift)
    out = torch.empty(len(s), channels, dtype=torch.bool, device=device)
    rows = max(1, len(s) if device.type != "cpu" else _NOISE_CHUNK // max(1, channels // 4))
    for i in range(0, len(s), rows):   # cache-sized chunks on a CPU, as _keep_masks
        b = at[i:i + rows]
        bits = _parity(row[i:i + rows, None] & codes.index_select(0, b))
        out[i:i + rows] = (bits ^ flips.index_select(0, b) ^ (s[i:i + rows, None] & 1)) == 1
    return out


@functools.lru_cache(maxsize=32)
def _design_tables(seed: int, blocks: tuple[int, ...], channels: int, device: str
                   ) -> tuple[torch.Tensor, ...]:
    """Per block of the orthogonal design, on ``device``: (block ids (B,), row keys w0 and w1
    (B,), codes (B, K), flips (B, K)). A batch's samples fall in a few blocks, and its next
    batches in the same ones: made once, not per batch (two Philox streams' worth of ops)."""
    _, mask, shift = _design_shape(channels)
    ids = torch.tensor(blocks, dtype=torch.int64)
    zero = torch.zeros((), dtype=torch.int64)
    tag = torch.full((), DESIGN_TAG_WORD, dtype=torch.int64)
    w0, w1, w2, w3 = philox4x32(ids, zero, zero + 1, tag, seed)
    quads = torch.arange((channels + 3) // 4, dtype=torch.int64)[None, :]
    flip_words = philox4x32(ids[:, None], quads, zero, tag, seed)
    flips = torch.stack(flip_words, dim=-1).flatten(1)[:, :channels] >> 31
    codes = _code_permutation(torch.arange(1, channels + 1)[None, :], w2[:, None], w3[:, None],
                              mask, shift)
    return tuple(t.to(device) for t in (ids, w0, w1, codes, flips))


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
