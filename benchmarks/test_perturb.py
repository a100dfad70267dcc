"""Benchmark of the perturbation: T perturbed activations of a (K, h, w) layer; kernel
(``perturb_kernel``, the kernel path of ``chip_fast.ops.perturb``) vs ``perturb_reference`` vs naive
PyTorch. Set-up in cuda_timing.py (GPU only)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.cuda_timing import DEV, timed

from chip_fast.ops.perturb import perturb_kernel, perturb_reference

PERTURB_CASES = {"K1280_7x7_T256": (32, 1280, (7, 7), 256),
                 "K96_56x56_T64": (8, 96, (56, 56), 64),
                 # the engine on CUDA: MobileNetV2 features.14.conv.0, bf16 channels-last out
                 "K576_14x14_T256_bf16_nhwc": (16, 576, (14, 14), 256)}


def _perturb_inputs(case):
    v, k, spatial, t = PERTURB_CASES[case]
    g = torch.Generator(device=DEV).manual_seed(0)
    acts = torch.randn(v, k, *spatial, device=DEV, generator=g)
    view = torch.arange(t, device=DEV) % v
    classes = torch.arange(t, device=DEV) % 10
    samples = torch.arange(t, device=DEV)
    mu = torch.randn(k, device=DEV, generator=g)
    sigma = torch.rand(k, device=DEV, generator=g)
    return acts, view, classes, samples, mu, sigma


def _perturb_naive(acts, view, classes, samples, mu, sigma, p_keep=0.5):
    # What one writes without a counter RNG: materialised Bernoulli masks and full noise tensors.
    a = acts[view]
    z = torch.rand(a.shape[:2], device=a.device) < p_keep
    noise = mu[:, None, None] + sigma[:, None, None] * torch.randn_like(a)
    return torch.where(z[:, :, None, None], a, noise), z


@pytest.mark.parametrize("case", list(PERTURB_CASES))
@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_perturb(benchmark, case, impl):
    benchmark.group = f"perturb {case}"
    acts, view, classes, samples, mu, sigma = _perturb_inputs(case)
    kw = dict(seed=1234, p_keep=0.5, fill="noise", mu=mu, sigma=sigma)
    if case.endswith("bf16_nhwc"):   # every variant in the tail's dtype and layout
        acts = acts.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        out = torch.empty((len(view), *acts.shape[1:]), dtype=torch.bfloat16, device=DEV,
                          memory_format=torch.channels_last)
        kw_kernel = dict(kw, out=out, validate=False)
    else:
        kw_kernel = kw
    fn = {"triton": lambda: perturb_kernel(acts, view, classes, samples, **kw_kernel),
          "reference": lambda: perturb_reference(acts, view, classes, samples, **kw),
          "naive": lambda: _perturb_naive(acts, view, classes, samples, mu, sigma)}[impl]
    timed(benchmark, fn)
