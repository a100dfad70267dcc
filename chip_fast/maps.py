"""Stage 2: CHIP maps from a layer's feature maps and the distilled channel importance.

This module owns which channels a map uses (the positive clamp of ``layer_maps``) and how layers
combine (``refine``). The map of one layer itself is the op ``chip_fast.class_maps`` (reference
and kernel dispatch), which this module may not duplicate.
"""
from __future__ import annotations

import torch

from .class_maps import class_maps, normalize_maps


def layer_maps(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
               class_index: torch.Tensor, size: tuple[int, int], *,
               positive: bool = True) -> torch.Tensor:
    """Normalised CHIP maps at ``size`` for P (image, class) pairs: (P, H, W) in [0, 1].

    ``positive`` keeps only the channels with positive importance (docs/evaluation.md): a
    channel whose presence lowers the class score marks where the evidence is *not*, and in a
    weighted sum it cuts holes into the object and, in the Refined product, into every layer.
    ``positive=False`` is METHOD.md's formula with all signs. On CUDA the weighted sum, ReLU,
    upsampling and normalisation run as Triton kernels.
    """
    if positive:
        weights = weights.clamp(min=0)
    return class_maps(acts, weights, image_index, class_index, size)


def refine(maps: list[torch.Tensor]) -> torch.Tensor:
    """Refined CHIP: the product of normalised per-layer maps of the same size, renormalised."""
    out = maps[0]
    for m in maps[1:]:
        out = out * m
    return normalize_maps(out)
