"""Stage 2: CHIP maps from a layer's feature maps and the distilled channel importance."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_maps_reference(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
                         class_index: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k W[c, k] A_k) for P (image, class) pairs, float32 of shape (P, h, w).

    acts: (B, K, h, w) feature maps; weights: (C, K); image_index, class_index: (P,).
    """
    a = acts.index_select(0, image_index).float()
    w = weights.index_select(0, class_index).float()
    return torch.relu(torch.einsum("pk,pkhw->phw", w, a))


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (h, w) map to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    span = hi - lo
    # Upsampling a constant map leaves ~1 ulp of rounding noise; stretching that to [0, 1] would
    # invent structure, so a span within rounding of the values counts as constant.
    eps = torch.finfo(flat.dtype).eps
    flat_enough = span <= 64 * eps * torch.maximum(lo.abs(), hi.abs())
    out = torch.where(flat_enough, 0.0, (flat - lo) / span.clamp(min=torch.finfo(flat.dtype).tiny))
    return out.view_as(maps)


def upsample_normalize_reference(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) of (P, h, w) maps to ``size``, then min-max."""
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(up)


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
    from .backend import use_triton
    if use_triton(acts):
        from .kernels.reweight import layer_maps_triton
        return layer_maps_triton(acts, weights, image_index, class_index, size)
    m = class_maps_reference(acts, weights.to(acts.device), image_index, class_index)
    return upsample_normalize_reference(m, size)


def refine(maps: list[torch.Tensor]) -> torch.Tensor:
    """Refined CHIP: the product of normalised per-layer maps of the same size, renormalised."""
    out = maps[0]
    for m in maps[1:]:
        out = out * m
    return normalize_maps(out)
