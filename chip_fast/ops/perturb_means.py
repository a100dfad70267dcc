"""Stage 1 perturbation for tails that see the layer only through its spatial mean.

Where the tail is affine in the spatial mean of the layer (``chip_fast.distill.tails.AffineTail``), a
perturbed network's logits depend on its perturbed activation only through

    m_k = z_k * abar_k + (1 - z_k) * fbar_k,

with abar the spatial mean of the view's activation and fbar the spatial mean of the fill: for
``noise`` that mean is exactly N(mu_k, sigma_k^2 / E) (E elements per channel), so it is drawn
directly, one normal per channel and sample (``rng.noise_means``: the same distribution of
responses as the per-element path, other numbers); ``mean`` gives mu_k and ``zero`` 0, the same
numbers as the per-element path up to rounding. The keep masks are the same as everywhere.

This module owns the op ``perturb_means``: its PyTorch reference and the dispatch to the Triton
kernel (``chip_fast.kernels.perturb_means``). It may not define random streams (the counter
layout is ``rng``'s) nor import triton or the kernels at module level.
"""
from __future__ import annotations

import math

import torch

from .. import rng
from .perturb import FILLS


def noise_mean_scale(elements: int) -> float:
    """1 / sqrt(E) rounded to float32: the std of a mean of E unit normals."""
    return float(torch.tensor(1.0 / math.sqrt(elements), dtype=torch.float32))


def perturb_means_reference(means: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                            samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                            mu: torch.Tensor, sigma: torch.Tensor, elements: int,
                            design: str = "independent", folds: int = 1
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial means of T perturbed activations, float32 (T, K), and their (T, K) bool masks.

    means: (V, K) spatial means of V views' activations; view, classes, samples: (T,) as in
    ``perturb_reference``; mu, sigma: (K,) fill statistics; elements: E = H * W of the layer.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    k = means.shape[1]
    masks = rng.keep_masks(seed, samples, k, p_keep, design, folds)
    base = means.index_select(0, view).float()
    if fill == "zero":
        fbar = torch.zeros((), device=means.device)
    elif fill == "mean":
        fbar = mu.float()[None, :]
    else:
        scale = sigma.float() * noise_mean_scale(elements)
        fbar = mu.float()[None, :] + scale[None, :] * rng.noise_means(seed, classes, samples, k)
    return torch.where(masks, base, fbar), masks


def perturb_means_kernel(means: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                         samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                         mu: torch.Tensor, sigma: torch.Tensor, elements: int,
                         validate: bool = True, design: str = "independent", folds: int = 1
                         ) -> torch.Tensor:
    """``perturb_means_reference``'s means by the Triton kernel, whatever the device (the tests
    run it on CPU under Triton's interpreter); no masks (the statistics regenerate them)."""
    from ..kernels.perturb_means import perturb_means_triton
    return perturb_means_triton(means, view, classes, samples, key=rng.seed_key(seed),
                                threshold=rng.keep_threshold(p_keep), mask_tag=rng.MASK_TAG_WORD,
                                noise_tag=rng.NOISE_MEAN_TAG_WORD, class_mask=rng.CLASS_BITS,
                                fill=fill, mu=mu, sigma=sigma,
                                scale=noise_mean_scale(elements), validate=validate,
                                design=rng.design_args(design, means.shape[1], p_keep, folds))


def perturb_means(means: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                  samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                  mu: torch.Tensor, sigma: torch.Tensor, elements: int, validate: bool = True,
                  design: str = "independent", folds: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``perturb_means_reference``; on CUDA the Triton kernel, which returns no masks (None)."""
    from .backend import use_triton
    if use_triton(means):
        return perturb_means_kernel(means, view, classes, samples, seed=seed, p_keep=p_keep,
                                    fill=fill, mu=mu, sigma=sigma, elements=elements,
                                    validate=validate, design=design, folds=folds), None
    return perturb_means_reference(means, view, classes, samples, seed=seed, p_keep=p_keep,
                                   fill=fill, mu=mu, sigma=sigma, elements=elements,
                                   design=design, folds=folds)
