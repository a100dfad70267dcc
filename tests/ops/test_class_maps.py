"""The class-map kernels (``chip_fast.kernels.class_maps``) against
``upsample_normalize_reference(class_maps_reference(...))``.

Set-up and helpers (interpreter, poisoned allocations) are in tests/kernel_helpers.py.
"""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1, which must precede the first import
# of triton and chip_fast.kernels.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast.ops.class_maps import class_maps_reference, upsample_normalize_reference
from chip_fast.kernels import class_maps as kclass_maps
from chip_fast.kernels.class_maps import class_maps_triton

skip_unless_runnable(kclass_maps._class_maps_kernel)
skip_unless_runnable(kclass_maps._upsample_normalize_kernel)


MAP_CASES = [
    # (B, K, h, w, C, P, size)
    (2, 13, 5, 7, 3, 5, (17, 23)),     # upsample by non-integer factors
    (2, 1, 4, 3, 2, 3, (9, 8)),        # K = 1
    (1, 40, 6, 6, 1, 1, (6, 6)),       # one class, same size (identity resampling)
    (3, 20, 6, 5, 2000, 6, (13, 11)),  # thousands of classes
    (2, 9, 9, 11, 4, 3, (5, 4)),       # downsampling
    (1, 7, 2, 9, 2, 2, (3, 40)),       # very anisotropic
]


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: f"K{c[1]}h{c[2]}w{c[3]}C{c[4]}P{c[5]}")
def test_class_maps_matches_reference(case):
    b, k, h, w, c, p, size = case
    g = gen(b * 1000 + k * 10 + c)
    acts = torch.randn(b, k, h, w, generator=g).to(DEV)
    weights = torch.randn(c, k, generator=g).to(DEV)
    image_index = torch.randint(0, b, (p,), generator=g).to(DEV)
    class_index = torch.randint(0, c, (p,), generator=g).to(DEV)
    # Keep every map well conditioned: a positive weight on a positive channel so that its
    # min-max span is not tiny (normalisation amplifies rounding by max|map| / span).
    acts[:, 0] = acts[:, 0].abs() + 0.5
    weights[:, 0] = weights[:, 0].abs() + 1.0
    with poisoned_allocations():
        out = class_maps_triton(acts, weights, image_index, class_index, size)
    ref = upsample_normalize_reference(
        class_maps_reference(acts, weights, image_index, class_index), size)
    assert out.shape == (p, *size) and out.dtype == torch.float32
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert_close(out, ref, rtol=1e-5, atol_scale=1.0)


def test_class_maps_half_acts_cpu_weights_and_degenerate_maps():
    g = gen(11)
    acts = (torch.randn(2, 8, 4, 5, generator=g).abs() + 0.1).to(DEV, torch.float16)
    weights = torch.randn(3, 8, generator=g, dtype=torch.float64)
    weights[1] = -1.0  # class 1: every map is ReLU'd to 0 -> an all-zero normalised map
    image_index = torch.tensor([0, 1, 1, 0], device=DEV)
    class_index = torch.tensor([0, 1, 2, 2], device=DEV)
    with poisoned_allocations():
        out = class_maps_triton(acts, weights, image_index, class_index, (7, 9))
    ref = upsample_normalize_reference(
        class_maps_reference(acts, weights.to(DEV), image_index, class_index), (7, 9))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_close(out, ref, rtol=1e-5, atol_scale=1.0)
    # A 1x1 map upsamples to an exactly constant map, which normalises to zeros. (The reference's
    # F.interpolate is off by an ulp at some pixels, which normalisation blows up to 1.)
    one = torch.full((1, 3, 1, 1), 0.7, device=DEV)
    out = class_maps_triton(one, torch.ones(2, 3, device=DEV), torch.zeros(2, dtype=torch.long,
                            device=DEV), torch.tensor([0, 1], device=DEV), (5, 6))
    assert torch.equal(out, torch.zeros(2, 5, 6, device=DEV))


def test_class_maps_empty_and_errors():
    acts = torch.randn(2, 4, 3, 3, device=DEV)
    weights = torch.randn(5, 4, device=DEV)
    empty = torch.zeros(0, dtype=torch.long, device=DEV)
    assert class_maps_triton(acts, weights, empty, empty, (4, 4)).shape == (0, 4, 4)
    idx = torch.tensor([0, 1], device=DEV)
    with pytest.raises(ValueError, match="weights"):
        class_maps_triton(acts, weights[:, :3], idx, idx, (4, 4))
    with pytest.raises(IndexError, match="image_index"):
        class_maps_triton(acts, weights, idx + 1, idx, (4, 4))
    with pytest.raises(IndexError, match="class_index"):
        class_maps_triton(acts, weights, idx, idx + 4, (4, 4))
