"""Benchmark of the affine path's perturbation: T x K perturbed spatial means; kernel
(``perturb_means_kernel``) vs ``perturb_means_reference`` vs naive PyTorch, and what it replaces:
the per-element perturbation of the same T samples at 7x7. Set-up in cuda_timing.py (GPU only)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.cuda_timing import DEV, timed

from chip_fast.ops.perturb import perturb_kernel
from chip_fast.ops.perturb_means import perturb_means_kernel, perturb_means_reference

V, K, T, E = 32, 1280, 4096, 49     # MobileNetV2 features.18, one unit of 8 classes x 512


def _inputs():
    g = torch.Generator(device=DEV).manual_seed(0)
    acts = torch.randn(V, K, 7, 7, device=DEV, generator=g)
    view = torch.arange(T, device=DEV) % V
    classes = torch.arange(T, device=DEV) % 8
    samples = torch.arange(T, device=DEV) // 8
    mu, sigma = torch.randn(K, device=DEV, generator=g), torch.rand(K, device=DEV, generator=g)
    return acts, view, classes, samples, mu, sigma


def _naive(means, view, mu, sigma):
    # Without a counter RNG: materialised masks and one normal per channel and sample.
    base = means[view]
    z = torch.rand(base.shape, device=DEV) < 0.5
    return torch.where(z, base, mu + sigma / E ** 0.5 * torch.randn_like(base))


@pytest.mark.parametrize("impl", ["triton", "reference", "naive", "per_element_triton"])
def test_perturb_means(benchmark, impl):
    benchmark.group = f"perturb_means V{V} K{K} T{T}"
    acts, view, classes, samples, mu, sigma = _inputs()
    means = acts.mean((2, 3))
    kw = dict(seed=1234, p_keep=0.5, fill="noise", mu=mu, sigma=sigma)
    fn = {"triton": lambda: perturb_means_kernel(means, view, classes, samples, elements=E,
                                                 validate=False, **kw),
          "reference": lambda: perturb_means_reference(means, view, classes, samples,
                                                       elements=E, **kw),
          "naive": lambda: _naive(means, view, mu, sigma),
          "per_element_triton": lambda: perturb_kernel(acts, view, classes, samples,
                                                       validate=False, **kw)}[impl]
    timed(benchmark, fn)
