"""Cutting the atlas's patches: a square of a view around a layer cell, resampled to a small
fixed size (``ChannelAtlas`` in ``collect`` decides which cells and how large a square).

A patch shrinks a square of ``side`` view pixels to ``patch_px``; at the measured receptive
fields that is 2-5 view pixels per patch pixel. Averaging each patch pixel's whole footprint
point by point (roi_align with a sampling ratio of side / patch_px) costs the square of that
ratio per pixel of every patch, and the first batch of a job cuts a patch for every channel of
every layer. So the views are first shrunk once per layer, with an antialiasing filter, to
where a patch pixel spans at most two view pixels, and the patches are cut from that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Patch pixels span at most this many pixels of the (shrunk) view that roi_align samples.
MAX_SPAN = 2


def patch_side(height: int, width: int, grid: tuple[int, int], scale: float) -> int:
    """The side, in view pixels, of a patch of ``scale`` strides of a layer grid (h, w)."""
    return int(min(height, width, round(scale * height / grid[0])))


def _squares(height: int, width: int, cell: torch.Tensor, grid: tuple[int, int], side: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y0, x0) of the squares of ``side`` centred on the cells, shifted inside the view."""
    cy = (cell[:, 0].double() + 0.5) * height / grid[0]
    cx = (cell[:, 1].double() + 0.5) * width / grid[1]
    return ((cy - side / 2).round().clamp(0, height - side),
            (cx - side / 2).round().clamp(0, width - side))


def _as_patches(crops: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, side: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    patches = (crops.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    where = torch.stack([y0, x0, torch.full_like(y0, side)], 1).to(torch.int32)
    return patches.cpu(), where.cpu()


def cut_patches(rgb: torch.Tensor, view: torch.Tensor, cell: torch.Tensor,
                grid: tuple[int, int], patch_px: int, scale: float,
                max_span: float = MAX_SPAN) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (N, P, P, 3) uint8 of the [0, 1] views ``rgb`` (B, 3, H, W) around cells
    (N, 2) = (row, col) of a layer grid (h, w), and their (y0, x0, side) in view pixels; the
    views shrunk until a patch pixel spans at most ``max_span`` of their pixels."""
    from torchvision.ops import roi_align
    height, width = rgb.shape[-2:]
    side = patch_side(height, width, grid, scale)
    y0, x0 = _squares(height, width, cell, grid, side)
    shrink = min(1.0, max_span * patch_px / side)
    src, sy, sx = rgb, 1.0, 1.0
    if shrink < 1.0:
        size = (max(1, round(height * shrink)), max(1, round(width * shrink)))
        src = F.interpolate(rgb, size=size, mode="bilinear", antialias=True, align_corners=False)
        sy, sx = size[0] / height, size[1] / width
    boxes = torch.stack([view.double(), x0 * sx, y0 * sy, (x0 + side) * sx, (y0 + side) * sy],
                        1).to(src)
    crops = roi_align(src, boxes, output_size=patch_px, spatial_scale=1.0,
                      sampling_ratio=max(1, round(side * min(sy, sx) / patch_px)), aligned=True)
    return _as_patches(crops, y0, x0, side)


def cut_patches_reference(rgb: torch.Tensor, view: torch.Tensor, cell: torch.Tensor,
                          grid: tuple[int, int], patch_px: int, scale: float
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cut_patches` without shrinking: every patch pixel averaged over its whole
    footprint in the full-size view (how patches were cut before; the tests' and the
    benchmark's reference)."""
    return cut_patches(rgb, view, cell, grid, patch_px, scale, max_span=float("inf"))
