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
    """Refined CHIP: the product of normalised per-layer maps of the same size, renormalised.

    The product lets the class-discriminative deep map gate the finer one: a location counts
    only where both layers see the class. Measured against the alternatives on the selection
    half of imagenette (bench/imagenette_search.py, docs/evaluation.md), it is as good as any
    on MaxBoxAcc (weighted geometric means, sums and thresholded gates are within the noise of
    127 photos or worse) and the only one whose best threshold sits at the field's fixed 0.2
    (0.18-0.24 across runs, against ~0.45 for one layer's map), so GT-known@0.2 and the top-1
    localization error get the whole of it. The order of ``maps`` does not matter.
    """
    out = maps[0]
    for m in maps[1:]:
        out = out * m
    return normalize_maps(out)
