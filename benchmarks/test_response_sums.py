"""Benchmark of the response sums: per class slot sum z*y and sum y; kernel
(``response_sums_kernel``, the kernel path of ``chip_fast.ops.response_sums``) vs
``response_sums_reference`` of ``rng.keep_masks`` vs naive PyTorch. Set-up in cuda_timing.py
(GPU only)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.cuda_timing import DEV, timed

from chip_fast import rng
from chip_fast.ops.response_sums import response_sums_kernel, response_sums_reference

T_RESP, K_RESP, ROWS_RESP = 8192, 1280, 16


def _response_inputs():
    g = torch.Generator(device=DEV).manual_seed(1)
    samples = torch.arange(T_RESP, device=DEV)
    y = torch.randn(T_RESP, device=DEV, generator=g)
    rows = torch.arange(T_RESP, device=DEV) % ROWS_RESP
    return samples, y, rows


def _response_naive(y, rows, p_keep=0.5):
    # Materialised masks (torch.rand) and a Python loop over the class slots.
    z = (torch.rand(T_RESP, K_RESP, device=DEV) < p_keep).double()
    szy = torch.zeros(ROWS_RESP, K_RESP, dtype=torch.float64, device=DEV)
    sy = torch.zeros(ROWS_RESP, dtype=torch.float64, device=DEV)
    for c in range(ROWS_RESP):
        sel = rows == c
        yc = y[sel].double()
        szy[c] = (z[sel] * yc[:, None]).sum(0)
        sy[c] = yc.sum()
    return szy, sy


@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_response_sums(benchmark, impl):
    benchmark.group = f"response_sums T{T_RESP} K{K_RESP} rows{ROWS_RESP}"
    samples, y, rows = _response_inputs()
    fn = {"triton": lambda: response_sums_kernel(7, samples, 0.5, K_RESP, y, rows, ROWS_RESP),
          "reference": lambda: response_sums_reference(
              rng.keep_masks(7, samples, K_RESP, 0.5), y, rows, ROWS_RESP),
          "naive": lambda: _response_naive(y, rows)}[impl]
    timed(benchmark, fn)
