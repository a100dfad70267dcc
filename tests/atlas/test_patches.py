"""Cutting atlas patches (``chip_fast.atlas.patches``): shrinking the views first gives the patches
that averaging each patch pixel's whole footprint gives, up to resampling, and leaves patches
that need no shrinking exactly as they were."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chip_fast.atlas.patches import MAX_SPAN, cut_patches, patch_side
from chip_fast.atlas.patches import cut_patches_reference as footprint_reference

pytest.importorskip("torchvision.ops")


def smooth_views(n: int, size: int, seed: int) -> torch.Tensor:
    """Photo-like views: random blobs at several scales plus a little fine texture, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = sum(F.interpolate(torch.rand(n, 3, s, s, generator=g), size=(size, size),
                          mode="bicubic", align_corners=False) for s in (4, 12, 40))
    x = x / 3 + 0.05 * torch.rand(n, 3, size, size, generator=g)
    return x.clamp(0, 1)


@pytest.mark.parametrize("scale,grid", [(6.0, (7, 7)), (6.7, (14, 14)), (5.5, (14, 14))])
def test_shrunk_views_give_the_footprint_average(scale, grid):
    rgb = smooth_views(6, 224, seed=int(scale * 10))
    g = torch.Generator().manual_seed(1)
    view = torch.randint(0, len(rgb), (300,), generator=g)
    cell = torch.randint(0, grid[0], (300, 2), generator=g)
    patches, where = cut_patches(rgb, view, cell, grid, 40, scale)
    ref, ref_where = footprint_reference(rgb, view, cell, grid, 40, scale)
    assert patch_side(224, 224, grid, scale) > MAX_SPAN * 40      # the shrinking path
    assert torch.equal(where, ref_where)                           # the same squares
    diff = (patches.float() - ref.float()).abs()
    assert diff.mean() < 2.0 and torch.quantile(diff.flatten(), 0.99) < 12, (diff.mean(), diff.max())


def test_patches_that_need_no_shrinking_are_the_footprint_average_exactly():
    rgb = smooth_views(3, 64, seed=3)
    view, cell = torch.tensor([0, 1, 2, 2]), torch.tensor([[0, 0], [3, 5], [7, 7], [4, 2]])
    patches, where = cut_patches(rgb, view, cell, (8, 8), 12, 2.0)    # 16 px into 12
    ref, ref_where = footprint_reference(rgb, view, cell, (8, 8), 12, 2.0)
    assert torch.equal(patches, ref) and torch.equal(where, ref_where)


def test_a_uniform_square_keeps_its_colour_after_shrinking():
    rgb = torch.zeros(1, 3, 224, 224)
    rgb[0, 1, 32:192, 32:192] = 1.0                # green square, larger than the patch's side
    patches, where = cut_patches(rgb, torch.tensor([0]), torch.tensor([[3, 3]]), (7, 7), 40, 4.0)
    assert tuple(where[0].tolist()) == (48, 48, 128)
    assert patches[0, ..., 1].min() == 255 and patches[0, ..., [0, 2]].max() == 0
