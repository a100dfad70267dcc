"""Stage 2 class maps: ReLU(sum_k W[c, k] A_k) for (image, class) pairs, bilinearly upsampled to
the image size and min-max normalised to [0, 1].

This module owns the op ``class_maps``: its PyTorch references (``class_maps_reference``, the
weighted channel sum + ReLU at the layer's resolution; ``upsample_normalize_reference``, the
upsampling and normalisation) and the dispatch to the Triton kernels
(``chip_fast.kernels.class_maps``), which do both. It may not choose which channels count (the
positive clamp and the combination of layers are ``chip_fast.maps.explain``'s) nor import triton or the
kernels at module level: the PyTorch path must run where Triton is absent.
"""
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


def class_maps(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
               class_index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalised class maps at ``size`` for P (image, class) pairs: (P, H, W) float32 in [0, 1].

    ``upsample_normalize_reference(class_maps_reference(...), size)``, on CUDA by the Triton
    kernels when they are available. ``weights`` may live on another device than ``acts``.
    """
    from .backend import use_triton
    if use_triton(acts):
        from ..kernels.class_maps import class_maps_triton
        return class_maps_triton(acts, weights, image_index, class_index, size)
    m = class_maps_reference(acts, weights.to(acts.device), image_index, class_index)
    return upsample_normalize_reference(m, size)
