"""The response-sums kernel (``chip_fast.kernels.response_sums``) against
``response_sums_reference`` of ``rng.keep_masks``.

``response_sums_kernel`` is the kernel path of ``chip_fast.ops.response_sums`` whatever the device;
set-up and helpers (interpreter, poisoned allocations) are in tests/kernel_helpers.py.
"""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1, which must precede the first import
# of triton and chip_fast.kernels.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast import rng
from chip_fast.kernels import response_sums as kresponse_sums
from chip_fast.ops.response_sums import response_sums_kernel, response_sums_reference

skip_unless_runnable(kresponse_sums._response_sums_kernel)


RESPONSE_CASES = [
    # (T, K, n_rows, p_keep)
    (100, 13, 3, 0.5),
    (1, 1, 1, 0.5),          # one sample, K = 1
    (0, 5, 2, 0.5),          # no samples: zeros
    (600, 6, 1, 0.3),        # one row, long run: split over several programs
    (40, 37, 9, 0.9),        # rows without samples, K not a multiple of 4 or the block
    (30, 3, 1000, 0.5),      # a thousand class slots, most empty
]


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=lambda c: f"T{c[0]}K{c[1]}R{c[2]}")
def test_response_sums_matches_reference(case):
    t, k, n_rows, p_keep = case
    g = gen(t * 31 + k)
    samples = torch.randint(0, 2**32, (t,), generator=g).to(DEV)
    y = torch.randn(t, generator=g).to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    seed = 2**40 + 17
    with poisoned_allocations():
        szy, sy, syy = response_sums_kernel(seed, samples, p_keep, k, y, rows, n_rows)
    if t:
        masks = rng.keep_masks(seed, samples, k, p_keep)
    else:  # rng.keep_masks cannot reshape zero samples (reported); the masks are simply (0, K)
        masks = torch.zeros(0, k, dtype=torch.bool, device=DEV)
    ref_zy, ref_y, ref_yy = response_sums_reference(masks, y, rows, n_rows)
    assert szy.dtype == sy.dtype == syy.dtype == torch.float64
    assert_close(szy, ref_zy, rtol=1e-12, atol_scale=1.0)
    assert_close(sy, ref_y, rtol=1e-12, atol_scale=1.0)
    assert_close(syy, ref_yy, rtol=1e-12, atol_scale=1.0)


def test_response_sums_exact_and_deterministic():
    # Integer responses: every partial sum is exact in float64, so any order gives the same bits.
    g = gen(3)
    t, k, n_rows = 300, 10, 2
    samples = torch.randperm(10**6, generator=g)[:t].to(DEV)
    y = torch.randint(-50, 50, (t,), generator=g).float().to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    a = response_sums_kernel(5, samples, 0.5, k, y, rows, n_rows)
    b = response_sums_kernel(5, samples, 0.5, k, y, rows, n_rows)
    ref = response_sums_reference(rng.keep_masks(5, samples, k, 0.5), y, rows, n_rows)
    for got, again, want in zip(a, b, ref):
        assert torch.equal(got, want) and torch.equal(got, again)


def test_response_sums_errors():
    s = torch.arange(4, device=DEV)
    y = torch.ones(4, device=DEV)
    with pytest.raises(IndexError, match="rows"):
        response_sums_kernel(0, s, 0.5, 3, y, torch.tensor([0, 1, 2, 3], device=DEV), 3)
    with pytest.raises(ValueError, match="must all be"):
        response_sums_kernel(0, s[:3], 0.5, 3, y, s, 4)
