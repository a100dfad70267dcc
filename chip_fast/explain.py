"""Stage 2 entry point: CHIP and Refined CHIP maps of images for classes.

Owns the checks between a model, an importance file and a request (model fingerprint, layers,
classes); activations come from ``chip_fast.split`` and maps from ``chip_fast.maps``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .importance import Importance
from .maps import layer_maps, refine
from .split import split_model


def _as_classes(classes, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(classes, device=device).long().flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} classes for {batch} images")
    return t


def explain(model: nn.Module, importance: Importance, images: torch.Tensor,
            classes: int | Sequence[int] | torch.Tensor | None = None, *,
            layers: Sequence[str] | None = None, size: tuple[int, int] | None = None,
            positive: bool = True, check_model: bool = True) -> torch.Tensor:
    """CHIP maps (B, H, W) in [0, 1] for ``images`` (B, 3, H, W) and one class per image.

    ``classes=None`` explains each image's top-1 class. With several layers (by default all of
    the importance's) the result is the Refined CHIP map; with one, that layer's CHIP map.
    ``size`` defaults to the images' size. ``positive`` (default) weights each layer's channels
    by their positive importance only; ``positive=False`` uses every sign, as METHOD.md writes
    it (docs/evaluation.md measures both). The model must be the one the importance was
    distilled from (checked by fingerprint unless ``check_model=False``).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if check_model:
        importance.check_model(model)
    layers = list(layers or importance.layers)
    split = split_model(model, layers)
    missing = [l for l in layers if l not in importance.weights]
    if missing:
        raise ValueError(f"layers {missing} were not distilled; the file holds {importance.layers}")
    size = size or tuple(images.shape[-2:])
    with torch.inference_mode():
        acts, logits = split.forward(images)
        if classes is None:
            cls = logits.argmax(1)
        else:
            cls = _as_classes(classes, len(images), images.device)
        distilled = set(importance.classes)
        bad = [c for c in cls.unique().tolist() if c not in distilled]
        if bad:
            raise ValueError(f"classes {bad[:10]} were not distilled (the file holds "
                             f"{len(importance.classes)} classes)")
        maps = []
        index = torch.arange(len(images), device=images.device)
        for layer in layers:
            a = acts[layer]
            w = importance.weights[layer].to(a.device)
            if a.shape[1] != w.shape[1]:
                raise ValueError(f"layer {layer} has {a.shape[1]} channels, the importance "
                                 f"{w.shape[1]}")
            maps.append(layer_maps(a, w, index, cls, size, positive=positive))
    return refine(maps)
