"""The paired mask designs (``rng.keep_masks(..., design="antithetic" | "orthogonal")``) in every
op that makes or regenerates masks: the Triton kernels of perturb, perturb_means and
response_sums against their PyTorch references (Triton's interpreter on a CPU), the designs
themselves (pairs complement, share a fold, keep p_keep 0.5 per channel; the orthogonal design's
blocks have the population's Gram matrix exactly), and the mask moments the solve regenerates."""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1 before triton is imported.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast import rng
from chip_fast.kernels import perturb as kperturb
from chip_fast.ops.perturb import perturb_kernel, perturb_reference
from chip_fast.ops.perturb_means import perturb_means_kernel, perturb_means_reference
from chip_fast.ops.response_sums import response_sums_kernel, response_sums_reference
from chip_fast.solve.stats import mask_moments_of

skip_unless_runnable(kperturb._perturb_kernel)

SEED = (1 << 63) + 12345


def _samples(t: int, g: torch.Generator) -> torch.Tensor:
    # whole pairs and lone members, large indices (the kernels shift uint32 words)
    base = torch.randint(0, 2**31, (t // 2,), generator=g) * 2
    return torch.cat([base, base + 1, torch.randint(0, 2**32, (t - 2 * (t // 2),),
                                                    generator=g)]).to(DEV)


PAIRED = ["antithetic", "orthogonal"]


@pytest.mark.parametrize("design", PAIRED)
def test_pairs_complement_and_share_a_fold(design):
    s = torch.arange(64, device=DEV)
    z = rng.keep_masks(SEED, s, 37, 0.5, design)
    assert torch.equal(z[0::2], ~z[1::2])
    if design == "antithetic":
        assert torch.equal(z[0::2], rng.keep_masks(SEED, s[0::2] // 2, 37, 0.5))
    folds = rng.fold_of(s, 4, design)
    assert torch.equal(folds[0::2], folds[1::2]) and set(folds.tolist()) == {0, 1, 2, 3}
    assert torch.equal(rng.pair_start(s, design)[1::2], s[0::2])
    for other in ("independent", *PAIRED):   # another design, other masks
        assert other == design or not torch.equal(z, rng.keep_masks(SEED, s, 37, 0.5, other))


@pytest.mark.parametrize("design", PAIRED)
def test_paired_masks_keep_half_of_every_channel(design):
    z = rng.keep_masks(SEED, torch.arange(4096, device=DEV), 64, 0.5, design)
    assert torch.equal(z.sum(0), torch.full((64,), 2048, device=DEV))   # exactly, by design
    off = (z.float().T @ z.float() / 4096 - 0.25).fill_diagonal_(0)
    assert off.abs().max() < 0.04   # pairs of channels stay independent


@pytest.mark.parametrize("k", [1, 3, 7, 37, 64, 255])
def test_an_orthogonal_block_has_the_population_gram_exactly(k):
    """Over each whole block (2 * 2^m samples, 2^m > K) every channel is kept exactly half the
    time and every pair of channels exactly a quarter: distinct nonzero codes, a permutation of
    the rows. Another block, another seed: other rows."""
    block = 2 << rng.design_bits(k)
    z = rng.keep_masks(SEED, torch.arange(3 * block, device=DEV), k, 0.5, "orthogonal").long()
    want = torch.full((k, k), block // 4, device=DEV) + torch.eye(k, device=DEV,
                                                                  dtype=torch.long) * block // 4
    for b in range(3):
        part = z[b * block:(b + 1) * block]
        assert torch.equal(part.T @ part, want)
    assert k == 1 or not torch.equal(z[:block], z[block:2 * block])
    other = rng.keep_masks(SEED + 1, torch.arange(block, device=DEV), k, 0.5, "orthogonal")
    assert k == 1 or not torch.equal(other, z[:block].bool())


@pytest.mark.parametrize("folds", [2, 3, 4])
def test_every_fold_has_orthogonal_blocks_of_its_own(folds):
    """With F folds (pair j in fold j % F) each fold is a design of its own: its whole blocks
    have the population's Gram matrix, and folds draw other rows (independent replicates, as
    the split-half stability estimate assumes)."""
    k = 11
    block = 2 << rng.design_bits(k)
    s = torch.arange(folds * block, device=DEV)
    z = rng.keep_masks(SEED, s, k, 0.5, "orthogonal", folds).long()
    fold = rng.fold_of(s, folds, "orthogonal")
    want = torch.full((k, k), block // 4, device=DEV) + torch.eye(k, device=DEV,
                                                                  dtype=torch.long) * block // 4
    parts = [z[fold == f] for f in range(folds)]
    for part in parts:
        assert len(part) == block and torch.equal(part.T @ part, want)
    assert not torch.equal(parts[0], parts[1])
    with pytest.raises(ValueError, match="folds must be"):
        rng.keep_masks(SEED, s, k, 0.5, "orthogonal", 0)


def test_orthogonal_rows_are_fair_coins_across_blocks():
    """The flips make each design row uniform on {0, 1}^K, like an independent mask: the first
    row of many blocks keeps each channel half the time, pairs of channels a quarter."""
    k, block = 12, 2 << rng.design_bits(12)
    first = torch.arange(0, 4000 * block, block, device=DEV)
    z = rng.keep_masks(SEED, first, k, 0.5, "orthogonal").float()
    assert (z.mean(0) - 0.5).abs().max() < 0.04
    off = (z.T @ z / len(z) - 0.25).fill_diagonal_(0)
    assert off.abs().max() < 0.04


def test_orthogonal_masks_are_keyed_not_batched():
    full = rng.keep_masks(SEED, torch.arange(300, device=DEV), 37, 0.5, "orthogonal")
    idx = torch.tensor([293, 4, 150, 151], device=DEV)
    assert torch.equal(rng.keep_masks(SEED, idx, 37, 0.5, "orthogonal"), full[idx])
    with pytest.raises(ValueError, match="orthogonal masks need p_keep 0.5"):
        rng.keep_masks(SEED, idx, 37, 0.7, "orthogonal")
    with pytest.raises(ValueError, match="must be one of"):
        rng.keep_masks(SEED, idx, 37, 0.5, "hadamard")


@pytest.mark.parametrize("design", PAIRED)
@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
def test_perturb_kernel_paired(fill, design):
    g = gen(11 + len(fill))
    acts = torch.randn(5, 13, 3, 5, generator=g).to(DEV)
    t = 33
    view = torch.randint(0, 5, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 5000, (t,), generator=g).to(DEV)
    samples = _samples(t, g)
    mu, sigma = torch.randn(13, generator=g).to(DEV), (torch.rand(13, generator=g) + .5).to(DEV)
    kw = dict(seed=SEED, p_keep=0.5, fill=fill, mu=mu, sigma=sigma, design=design, folds=3)
    with poisoned_allocations():
        out = perturb_kernel(acts, view, classes, samples, **kw)
    ref, masks = perturb_reference(acts, view, classes, samples, **kw)
    assert torch.equal(masks, rng.keep_masks(SEED, samples, 13, 0.5, design, 3))
    assert torch.isfinite(out).all()
    assert_close(out, ref, rtol=1e-5)


@pytest.mark.parametrize("design", PAIRED)
@pytest.mark.parametrize("fill", ["noise", "zero"])
def test_perturb_means_kernel_paired(fill, design):
    g = gen(23 + len(fill))
    means = torch.randn(4, 37, generator=g).to(DEV)
    t = 41
    view = torch.randint(0, 4, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 99, (t,), generator=g).to(DEV)
    samples = _samples(t, g)
    mu, sigma = torch.randn(37, generator=g).to(DEV), (torch.rand(37, generator=g) + .5).to(DEV)
    kw = dict(seed=SEED, p_keep=0.5, fill=fill, mu=mu, sigma=sigma, elements=49, design=design,
              folds=4)
    with poisoned_allocations():
        out = perturb_means_kernel(means, view, classes, samples, **kw)
    ref, _ = perturb_means_reference(means, view, classes, samples, **kw)
    assert_close(out, ref, rtol=1e-5)


@pytest.mark.parametrize("design", PAIRED)
def test_response_sums_kernel_paired(design):
    g = gen(7)
    t, k, n_rows = 90, 13, 3
    samples = _samples(t, g)
    y = torch.randn(t, generator=g).to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    with poisoned_allocations():
        szy, sy, syy = response_sums_kernel(SEED, samples, 0.5, k, y, rows, n_rows,
                                            design=design, folds=4)
    masks = rng.keep_masks(SEED, samples, k, 0.5, design, 4)
    ref_zy, ref_y, ref_yy = response_sums_reference(masks, y, rows, n_rows)
    assert_close(szy, ref_zy, rtol=1e-12, atol_scale=1.0)
    assert_close(sy, ref_y, rtol=1e-12, atol_scale=1.0)


@pytest.mark.parametrize("design", PAIRED)
def test_mask_moments_follow_the_design(design):
    s = torch.arange(0, 200, device=DEV)
    s1, s2 = mask_moments_of(SEED, s, 9, 0.5, design=design, folds=4)
    z = rng.keep_masks(SEED, s, 9, 0.5, design, 4).long()
    assert torch.equal(s1, z.sum(0)) and torch.equal(s2, z.T @ z)
