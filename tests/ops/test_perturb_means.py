"""Perturbed spatial means (``chip_fast.ops.perturb_means``): the kernel against the reference, and
the reference against the spatial mean of the per-element perturbation it stands for."""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1 before triton is imported.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast.kernels import perturb_means as kmeans
from chip_fast.ops.perturb import perturb_reference
from chip_fast.ops.perturb_means import (noise_mean_scale, perturb_means_kernel,
                                     perturb_means_reference)

skip_unless_runnable(kmeans._perturb_means_kernel)

CASES = [  # (V, K, T)
    (3, 13, 9),      # K not a multiple of 4, T not a multiple of the block
    (2, 1, 5),       # K = 1
    (4, 150, 70),    # several blocks both ways
]


def inputs(v, k, t, seed):
    g = gen(seed)
    means = torch.randn(v, k, generator=g).to(DEV) + 5.0    # never equal to a fill value
    view = torch.randint(0, v, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 2**40, (t,), generator=g).to(DEV)
    samples = torch.randint(0, 2**32, (t,), generator=g).to(DEV)
    mu, sigma = torch.randn(k, generator=g).to(DEV), (torch.rand(k, generator=g) + 0.5).to(DEV)
    return means, view, classes, samples, mu, sigma


@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"V{c[0]}K{c[1]}T{c[2]}")
def test_kernel_matches_reference(fill, case):
    means, view, classes, samples, mu, sigma = inputs(*case, seed=sum(case))
    kw = dict(seed=2**63 + 5, p_keep=0.5, fill=fill, mu=mu, sigma=sigma, elements=49)
    with poisoned_allocations():
        got = perturb_means_kernel(means, view, classes, samples, **kw)
    want, masks = perturb_means_reference(means, view, classes, samples, **kw)
    assert_close(got, want, rtol=1e-5)
    assert torch.equal(got == means[view], masks)            # keep decisions bit for bit
    if fill != "noise":
        assert torch.equal(got, want)


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_same_as_the_mean_of_the_per_element_perturbation(fill):
    """For the zero and mean fills the two paths are the same numbers (up to rounding)."""
    g = gen(4)
    acts = torch.randn(3, 7, 5, 6, generator=g)
    view, classes = torch.tensor([0, 2, 1, 1]), torch.tensor([3, 3, 8, 9])
    samples, mu, sigma = torch.tensor([0, 1, 2, 3]), torch.randn(7, generator=g), torch.rand(7)
    kw = dict(seed=9, p_keep=0.5, fill=fill, mu=mu, sigma=sigma)
    pert, masks = perturb_reference(acts, view, classes, samples, **kw)
    means, mmasks = perturb_means_reference(acts.mean((2, 3)), view, classes, samples,
                                            elements=30, **kw)
    assert torch.equal(masks, mmasks)
    torch.testing.assert_close(means, pert.mean((2, 3)), rtol=1e-6, atol=1e-6)


def test_noise_mean_has_the_distribution_of_the_noise_spatial_mean():
    """N(mu, sigma^2 / E): the mean and spread of many draws of a dropped channel's fill mean."""
    t, k, e = 4000, 3, 49
    mu, sigma = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 2.0, 0.5])
    means = torch.full((1, k), 100.0)
    out, masks = perturb_means_reference(means, torch.zeros(t, dtype=torch.long),
                                         torch.full((t,), 7), torch.arange(t), seed=1,
                                         p_keep=0.5, fill="noise", mu=mu, sigma=sigma, elements=e)
    for c in range(k):
        fill = out[~masks[:, c], c]
        assert abs(fill.mean() - mu[c]) < 4 * sigma[c] / e ** 0.5 / len(fill) ** 0.5
        assert abs(fill.std() / (sigma[c] / e ** 0.5) - 1) < 0.06
    assert noise_mean_scale(e) == pytest.approx(1 / 7)


def test_errors_and_empty():
    means = torch.randn(2, 4, device=DEV)
    z, o = torch.zeros(4, device=DEV), torch.ones(4, device=DEV)
    empty = torch.zeros(0, dtype=torch.long, device=DEV)
    kw = dict(seed=1, p_keep=0.5, mu=z, sigma=o, elements=4)
    assert perturb_means_kernel(means, empty, empty, empty, fill="zero", **kw).shape == (0, 4)
    idx = torch.tensor([0, 2], device=DEV)
    with pytest.raises(IndexError, match="view"):
        perturb_means_kernel(means, idx, idx, idx, fill="zero", **kw)
    with pytest.raises(ValueError, match="fill"):
        perturb_means_kernel(means, idx[:1], idx[:1], idx[:1], fill="blur", **kw)
