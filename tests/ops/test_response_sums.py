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


UNIT_CASES = [
    # (rows in the unit, batch, n_rows, K, response matrix, baseline, mask design)
    (70, 16, 6, 13, True, True, "independent"),    # a short last batch, logits gathered by class
    (64, 16, 4, 5, False, False, "antithetic"),    # (T,) responses, antithetic masks
    (300, 300, 1, 6, True, False, "independent"),  # one row group, many samples: several splits
    (40, 16, 9, 37, False, True, "orthogonal"),    # row groups without samples in some batches
]


@pytest.mark.parametrize("case", UNIT_CASES, ids=lambda c: f"T{c[0]}B{c[1]}R{c[2]}K{c[3]}")
def test_unit_sums_kernel_matches_the_reference_over_a_units_batches(case):
    """The engine's path (``UnitSums`` with a plan: the per-batch sort and bounds made once,
    one accumulating launch per batch that gathers each row's response and subtracts the
    baseline) against ``response_sums_reference`` of every batch, added in order."""
    from chip_fast.ops.response_sums import UnitSums, sums_plan
    t, batch, n_rows, k, matrix, baseline, design = case
    g = gen(t + k)
    classes_n, views_n = 7, 5
    sum_rows = torch.randint(0, n_rows, (t,), generator=g)
    samples = torch.randperm(10**5, generator=g)[:t]
    classes = torch.randint(0, classes_n, (t,), generator=g)
    views = torch.randint(0, views_n, (t,), generator=g)
    base = torch.randn(views_n, generator=g).to(DEV) if baseline else None
    plan, splits = sums_plan(sum_rows, samples, classes, views, n_rows, batch)
    if case[2] == 1:
        assert splits > 1   # the case meant to cover the split reduction
    plan = (tuple(x.to(DEV) for x in plan), splits)
    kw = dict(seed=2**33 + 9, p_keep=0.5, design=design, folds=3, batch=batch)
    cut = [tuple(x.to(DEV) for x in part) for part in zip(
        classes.split(batch), views.split(batch), sum_rows.split(batch))]
    kernel = UnitSums(n_rows, k, DEV, plan=plan, **kw)
    reference = UnitSums(n_rows, k, DEV, batches=cut, **kw)
    for b, (cls, view, rows) in enumerate(cut):
        shape = (len(cls), classes_n) if matrix else (len(cls),)
        responses = torch.randn(*shape, generator=g).to(DEV)
        smp = samples[b * batch:(b + 1) * batch].to(DEV)
        masks = rng.keep_masks(kw["seed"], smp, k, 0.5, design, 3)
        with poisoned_allocations():
            kernel.add(b, responses, base, None)
        reference.add(b, responses, base, masks)
    for got, want in zip(kernel.result(), reference.result()):
        assert got.dtype == torch.float64
        assert_close(got, want, rtol=1e-12, atol_scale=1.0)
