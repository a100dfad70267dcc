"""Benchmark of the FISTA step: K = 1280 channels, C = 1000 classes; kernel
(``fista_step_triton``) vs ``fista_step_reference`` vs naive PyTorch. Set-up in cuda_timing.py
(GPU only)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.cuda_timing import DEV, timed

from chip_fast.kernels.prox import fista_step_triton
from chip_fast.ops.prox import fista_step_reference, soft_threshold

K_FISTA, C_FISTA = 1280, 1000


def _fista_inputs(dtype):
    g = torch.Generator(device=DEV).manual_seed(3)
    a = torch.randn(K_FISTA, K_FISTA, device=DEV, dtype=dtype, generator=g)
    gram = a @ a.t() / K_FISTA
    w, v, r = (torch.randn(K_FISTA, C_FISTA, device=DEV, dtype=dtype, generator=g)
               for _ in range(3))
    lam = torch.rand(C_FISTA, device=DEV, dtype=dtype, generator=g) * 0.1
    return gram, w, v, r, lam


def _fista_naive(gram, w, v, r, eta, lam, momentum):
    # One class at a time, as a per-class Lasso loop would.
    w_next = torch.empty_like(w)
    v_next = torch.empty_like(v)
    for c in range(w.shape[1]):
        u = v[:, c] - eta * (gram @ v[:, c] - r[:, c])
        w_next[:, c] = soft_threshold(u, eta * lam[c])
        v_next[:, c] = w_next[:, c] + momentum * (w_next[:, c] - w[:, c])
    return w_next, v_next


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_fista_step(benchmark, dtype, impl):
    benchmark.group = f"fista_step K{K_FISTA} C{C_FISTA} {dtype}"
    gram, w, v, r, lam = _fista_inputs(dtype)
    eta, momentum = 0.01, 0.5
    fn = {"triton": lambda: fista_step_triton(gram, w, v, r, eta, lam, False, momentum),
          "reference": lambda: fista_step_reference(gram, w, v, r, eta, lam, False, momentum),
          "naive": lambda: _fista_naive(gram, w, v, r, eta, lam, momentum)}[impl]
    timed(benchmark, fn, rounds=5 if impl == "naive" else None)
