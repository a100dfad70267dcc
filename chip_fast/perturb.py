"""Stage 1 perturbation: the activations of many perturbed networks, from cached activations.

A perturbed network replaces layer l's output A by  z * A + (1 - z) * F  with a keep mask z per
channel and the fill F of a disabled channel (METHOD.md). The masks and the noise come from
``chip_fast.rng``, keyed by (seed, class, sample, channel, element), so nothing is stored.
"""
from __future__ import annotations

import torch

from . import rng

FILLS = ("noise", "zero", "mean")


def perturb_reference(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                      samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                      mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturbed activations of T samples and their keep masks.

    acts:    (V, K, *spatial) cached activations of V image views.
    view:    (T,) row of ``acts`` each sample perturbs.
    classes: (T,) class of each sample (keys its noise).
    samples: (T,) per-class sample index (keys its mask and noise).
    mu, sigma: (K,) per-channel fill statistics (float32).
    Returns (T, K, *spatial) perturbed activations in acts' dtype and (T, K) bool keep masks.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    k = acts.shape[1]
    masks = rng.keep_masks(seed, samples, k, p_keep)
    out = acts.index_select(0, view)
    rows, chans = (~masks).nonzero(as_tuple=True)
    if rows.numel():
        if fill == "zero":
            values = torch.zeros((), dtype=out.dtype, device=out.device)
        elif fill == "mean":
            values = mu.index_select(0, chans).to(out.dtype).view(-1, *([1] * (out.dim() - 2)))
        else:
            elements = out[0, 0].numel()
            eps = rng.fill_noise(seed, classes.index_select(0, rows), samples.index_select(0, rows),
                                 chans, elements)
            values = (mu.index_select(0, chans)[:, None]
                      + sigma.index_select(0, chans)[:, None] * eps).to(out.dtype)
            values = values.view(-1, *out.shape[2:])
        out[rows, chans] = values
    return out, masks


def perturb(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor, samples: torch.Tensor,
            *, seed: int, p_keep: float, fill: str, mu: torch.Tensor, sigma: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``perturb_reference``, on CUDA by the fused Triton kernel when it is available."""
    from .backend import use_triton
    if use_triton(acts):
        from .kernels.perturb import perturb_triton
        return perturb_triton(acts, view, classes, samples, seed=seed, p_keep=p_keep, fill=fill,
                              mu=mu, sigma=sigma)
    return perturb_reference(acts, view, classes, samples, seed=seed, p_keep=p_keep, fill=fill,
                             mu=mu, sigma=sigma)
