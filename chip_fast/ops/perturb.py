"""Stage 1 perturbation: the activations of many perturbed networks, from cached activations.

A perturbed network replaces layer l's output A by  z * A + (1 - z) * F  with a keep mask z per
channel and the fill F of a disabled channel (METHOD.md). The masks and the noise come from
``chip_fast.rng``, keyed by (seed, class, sample, channel, element), so nothing is stored.

This module owns the op ``perturb``: its PyTorch reference and the dispatch to the Triton kernel
(``chip_fast.kernels.perturb``). It may not define random streams (the counter layout is
``rng``'s; the kernel gets it from here as arguments) nor import triton or the kernels at module
level: the PyTorch path must run where Triton is absent.
"""
from __future__ import annotations

import torch

from .. import rng

FILLS = ("noise", "zero", "mean")


def perturb_reference(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                      samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                      mu: torch.Tensor, sigma: torch.Tensor, design: str = "independent",
                      folds: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturbed activations of T samples and their keep masks.

    acts:    (V, K, *spatial) cached activations of V image views.
    view:    (T,) row of ``acts`` each sample perturbs.
    classes: (T,) class of each sample (keys its noise).
    samples: (T,) per-class sample index (keys its mask and noise).
    mu, sigma: (K,) per-channel fill statistics (float32).
    design, folds: how the masks are drawn (``rng.keep_masks``).
    Returns (T, K, *spatial) perturbed activations in acts' dtype and memory layout
    (channels-last acts give channels-last output, which a CPU tail runs faster) and (T, K) bool
    keep masks.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    k = acts.shape[1]
    masks = rng.keep_masks(seed, samples, k, p_keep, design, folds)
    out = acts[view]   # advanced indexing keeps a channels-last layout, index_select does not
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


def perturb_by_product(acts: torch.Tensor, view: torch.Tensor, masks: torch.Tensor, fill: str,
                       mu: torch.Tensor) -> torch.Tensor:
    """``perturb_reference``'s activations for the zero and mean fills of channels-last ``acts``
    (V, K, H, W), the CPU's path: the rows are gathered as (H, W, K) blocks and the masks
    applied by a product broadcast along K, where the reference's scattered writes of dropped
    channels cost several times the gather. Equal to the reference wherever the activations are
    finite (a non-finite one in a dropped channel stays non-finite, and the job reports it)."""
    hwk = acts.permute(0, 2, 3, 1)   # channels-last memory: a contiguous (V, H, W, K) tensor
    out = hwk.index_select(0, view)
    keep = masks.to(out.dtype)[:, None, None, :]
    out.mul_(keep)
    if fill == "mean":
        out.add_((1 - keep) * mu.to(out.dtype))
    return out.permute(0, 3, 1, 2)


def perturb_kernel(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor,
                   samples: torch.Tensor, *, seed: int, p_keep: float, fill: str,
                   mu: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor | None = None,
                   channels_last: bool = False, validate: bool = True,
                   design: str = "independent", folds: int = 1) -> torch.Tensor:
    """``perturb_reference``'s activations by the Triton kernel, whatever the device (the tests
    run it on CPU under Triton's interpreter): ``rng``'s key words, keep threshold and counter
    tags, handed to ``chip_fast.kernels.perturb.perturb_triton``. No masks: the statistics
    regenerate them (``chip_fast.ops.response_sums``)."""
    from ..kernels.perturb import perturb_triton
    return perturb_triton(acts, view, classes, samples, key=rng.seed_key(seed),
                          threshold=rng.keep_threshold(p_keep), mask_tag=rng.MASK_TAG_WORD,
                          noise_tag=rng.NOISE_TAG_WORD, class_mask=rng.CLASS_BITS, fill=fill,
                          mu=mu, sigma=sigma, out=out, channels_last=channels_last,
                          validate=validate,
                          design=rng.design_args(design, acts.shape[1], p_keep, folds))


def perturb(acts: torch.Tensor, view: torch.Tensor, classes: torch.Tensor, samples: torch.Tensor,
            *, seed: int, p_keep: float, fill: str, mu: torch.Tensor, sigma: torch.Tensor,
            out: torch.Tensor | None = None, validate: bool = True,
            design: str = "independent", folds: int = 1
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``perturb_reference``; on CUDA the fused Triton kernel, which writes into ``out`` when
    given (the tail's input buffer: its dtype and layout) and returns no masks (None)."""
    from .backend import use_triton
    if use_triton(acts):
        return perturb_kernel(acts, view, classes, samples, seed=seed, p_keep=p_keep, fill=fill,
                              mu=mu, sigma=sigma, out=out, channels_last=True,
                              validate=validate, design=design, folds=folds), None
    if fill in ("zero", "mean") and acts.dim() == 4 and acts.is_contiguous(
            memory_format=torch.channels_last):
        masks = rng.keep_masks(seed, samples, acts.shape[1], p_keep, design, folds)
        return perturb_by_product(acts, view, masks, fill, mu), masks
    return perturb_reference(acts, view, classes, samples, seed=seed, p_keep=p_keep, fill=fill,
                             mu=mu, sigma=sigma, design=design, folds=folds)
