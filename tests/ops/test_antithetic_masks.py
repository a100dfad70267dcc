"""The antithetic mask design (``rng.keep_masks(..., antithetic=True)``) in every op that makes or
regenerates masks: the Triton kernels of perturb, perturb_means and response_sums against their
PyTorch references (Triton's interpreter on a CPU), and the design itself (pairs complement,
share a fold, keep p_keep 0.5 per channel), and the mask moments the solve regenerates."""
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


def test_pairs_complement_and_share_a_fold():
    s = torch.arange(64, device=DEV)
    z = rng.keep_masks(SEED, s, 37, 0.5, antithetic=True)
    assert torch.equal(z[0::2], ~z[1::2])
    assert torch.equal(z[0::2], rng.keep_masks(SEED, s[0::2] // 2, 37, 0.5))
    folds = rng.fold_of(s, 4, antithetic=True)
    assert torch.equal(folds[0::2], folds[1::2]) and set(folds.tolist()) == {0, 1, 2, 3}
    assert torch.equal(rng.pair_start(s, True)[1::2], s[0::2])
    assert not torch.equal(z, rng.keep_masks(SEED, s, 37, 0.5))   # another design, other masks


def test_antithetic_masks_keep_half_of_every_channel():
    z = rng.keep_masks(SEED, torch.arange(4096, device=DEV), 64, 0.5, antithetic=True)
    assert torch.equal(z.sum(0), torch.full((64,), 2048, device=DEV))   # exactly, by design
    off = (z.float().T @ z.float() / 4096 - 0.25).fill_diagonal_(0)
    assert off.abs().max() < 0.04   # pairs of channels stay independent


@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
def test_perturb_kernel_antithetic(fill):
    g = gen(11 + len(fill))
    acts = torch.randn(5, 13, 3, 5, generator=g).to(DEV)
    t = 33
    view = torch.randint(0, 5, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 5000, (t,), generator=g).to(DEV)
    samples = _samples(t, g)
    mu, sigma = torch.randn(13, generator=g).to(DEV), (torch.rand(13, generator=g) + .5).to(DEV)
    kw = dict(seed=SEED, p_keep=0.5, fill=fill, mu=mu, sigma=sigma, antithetic=True)
    with poisoned_allocations():
        out = perturb_kernel(acts, view, classes, samples, **kw)
    ref, masks = perturb_reference(acts, view, classes, samples, **kw)
    assert torch.equal(masks, rng.keep_masks(SEED, samples, 13, 0.5, antithetic=True))
    assert_close(out, ref, rtol=1e-5)


@pytest.mark.parametrize("fill", ["noise", "zero"])
def test_perturb_means_kernel_antithetic(fill):
    g = gen(23 + len(fill))
    means = torch.randn(4, 37, generator=g).to(DEV)
    t = 41
    view = torch.randint(0, 4, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 99, (t,), generator=g).to(DEV)
    samples = _samples(t, g)
    mu, sigma = torch.randn(37, generator=g).to(DEV), (torch.rand(37, generator=g) + .5).to(DEV)
    kw = dict(seed=SEED, p_keep=0.5, fill=fill, mu=mu, sigma=sigma, elements=49,
              antithetic=True)
    with poisoned_allocations():
        out = perturb_means_kernel(means, view, classes, samples, **kw)
    ref, _ = perturb_means_reference(means, view, classes, samples, **kw)
    assert_close(out, ref, rtol=1e-5)


def test_response_sums_kernel_antithetic():
    g = gen(7)
    t, k, n_rows = 90, 13, 3
    samples = _samples(t, g)
    y = torch.randn(t, generator=g).to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    with poisoned_allocations():
        szy, sy, syy = response_sums_kernel(SEED, samples, 0.5, k, y, rows, n_rows,
                                            antithetic=True)
    masks = rng.keep_masks(SEED, samples, k, 0.5, antithetic=True)
    ref_zy, ref_y, ref_yy = response_sums_reference(masks, y, rows, n_rows)
    assert_close(szy, ref_zy, rtol=1e-12, atol_scale=1.0)
    assert_close(sy, ref_y, rtol=1e-12, atol_scale=1.0)


def test_mask_moments_follow_the_design():
    s = torch.arange(0, 200, device=DEV)
    s1, s2 = mask_moments_of(SEED, s, 9, 0.5, antithetic=True)
    z = rng.keep_masks(SEED, s, 9, 0.5, antithetic=True).long()
    assert torch.equal(s1, z.sum(0)) and torch.equal(s2, z.T @ z)
