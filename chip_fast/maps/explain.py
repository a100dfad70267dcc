"""Stage 2 entry point: CHIP and Refined CHIP maps of images for classes.

Owns the checks between a model, an importance file and a request (model fingerprint, layers,
classes) and which class each image is explained for; activations come from
``chip_fast.models.split``; which channels a map uses (``layer_maps``: the positive clamp) and how
layers combine (``refine``) are here, the map of one layer is the op ``chip_fast.ops.class_maps``.

Two calls, two contracts for classes the file does not hold (a file may hold some classes):
``explain`` returns a map for every image or raises ClassNotDistilledError naming the images
and classes, before computing any map; ``explain_available`` explains the images it can and
returns which ones, with the reason for each one it skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..importance.core import Importance
from ..ops.class_maps import class_maps, normalize_maps
from ..models.split import split_model

# classes="top-distilled": each image's highest-scoring class among those the file holds.
TOP_DISTILLED = "top-distilled"

Classes = int | Sequence[int] | torch.Tensor | str | None


# Chosen on MobileNetV2's selection half, confirmed on its other half and checked on
# EfficientNet-Lite0 (docs/evaluation.md, "How maps are made from W"); 1.0 is METHOD.md's map.
REFINE_POWER = 0.5


def layer_maps(acts: torch.Tensor, weights: torch.Tensor, image_index: torch.Tensor,
               class_index: torch.Tensor, size: tuple[int, int], *,
               positive: bool = True, power: float = 1.0) -> torch.Tensor:
    """Normalised CHIP maps at ``size`` for P (image, class) pairs: (P, H, W) in [0, 1].

    ``positive`` keeps only the channels with positive importance (docs/evaluation.md): a
    channel whose presence lowers the class score marks where the evidence is *not*, and in a
    weighted sum it cuts holes into the object and, in the Refined product, into every layer.
    ``positive=False`` is METHOD.md's formula with all signs. ``power`` raises each activation
    to it (sign kept) before the weighted sum (``refine_layer_powers`` says where). On CUDA the
    weighted sum, ReLU, upsampling and normalisation run as Triton kernels.
    """
    if positive:
        weights = weights.clamp(min=0)
    if power != 1.0:
        acts = acts.sign() * acts.abs().float() ** power
    return class_maps(acts, weights, image_index, class_index, size)


def refine_layer_powers(importance: Importance, layers: Sequence[str],
                        power: float = REFINE_POWER) -> dict[str, float]:
    """The activation power of each layer's factor in a map over ``layers``: ``power`` for a
    layer whose tail the distillation found not affine (``settings["paths"]``), when there are
    several layers; 1 otherwise (METHOD.md's map).

    Why only there: W[c, k] is what the class loses when channel k is removed everywhere.
    Behind an affine tail (pooling, then linear layers) that loss is exactly a sum over
    positions of the channel's values, so each position's share is its value and the plain map
    is the exact split. Behind a non-linear tail nothing says the share grows linearly with the
    value; a power below 1 counts where a channel is on more than how strongly. Measured
    (docs/evaluation.md): 0.5 raised MaxBoxAccV2 of Refined CHIP in all 8 cells (2
    architectures x 2 halves of imagenette val-dev x 2 importances, +0.003 to +0.029), with
    GT-known@0.2 and top-1 loc err better on MobileNetV2 and, on EfficientNet-Lite0, worse on
    one half and better on the other. The 14x14 map alone does not gain, so one-layer maps keep
    power 1. Files that do not record the paths keep power 1.
    """
    paths = importance.settings.get("paths") or {}
    if len(layers) < 2:
        return {layer: 1.0 for layer in layers}
    return {layer: power if paths.get(layer, "affine") != "affine" else 1.0 for layer in layers}


def refine(maps: list[torch.Tensor]) -> torch.Tensor:
    """Refined CHIP: the product of normalised per-layer maps of the same size, renormalised.

    The product lets the class-discriminative deep map gate the finer one: a location counts
    only where both layers see the class. Against the alternatives (weighted geometric means,
    sums, thresholded gates; docs/evaluation.md) it is as good as any on MaxBoxAcc and the only
    one whose best threshold sits at the field's fixed 0.2, so GT-known@0.2 and the top-1
    localization error get the whole of it. The order of ``maps`` does not matter.
    """
    out = maps[0]
    for m in maps[1:]:
        out = out * m
    return normalize_maps(out)


class ClassNotDistilledError(ValueError):
    """Images asked to be explained for classes the importance file does not hold."""

    def __init__(self, message: str, rows: dict[int, int]) -> None:
        super().__init__(message)
        self.rows = rows   # image index -> its class that was not distilled


@dataclass
class Explanation:
    """What ``explain_available`` made of a batch of B images.

    ``maps[k]`` (H, W) in [0, 1] is the map of image ``rows[k]`` for class ``classes[rows[k]]``;
    images not in ``rows`` are in ``skipped`` with the reason. ``logits`` (B, num_classes) are
    the model's outputs for every image."""
    maps: torch.Tensor                 # (P, H, W)
    rows: list[int]                    # the P explained images, ascending
    classes: torch.Tensor              # (B,) the class each image was (or would be) explained for
    logits: torch.Tensor               # (B, num_classes)
    skipped: dict[int, str] = field(default_factory=dict)


def _as_classes(classes, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(classes, device=device).long().flatten()
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} classes for {batch} images")
    return t


def check_class_range(classes: Sequence[int], num_classes: int) -> None:
    """Refuse class indices the model does not have, saying how many it has."""
    bad = sorted({int(c) for c in classes if not 0 <= int(c) < num_classes})
    if bad:
        raise ValueError(f"class {', '.join(map(str, bad[:10]))} does not exist: the model has "
                         f"{num_classes} classes (0-{num_classes - 1})")


def not_distilled_message(importance: Importance, rows: dict[int, int], what: str) -> str:
    """'top-1 classes not distilled: image 3 -> class 625 (lifeboat) ...' for ``rows``."""
    names = importance.class_names or []
    shown = ", ".join(f"image {r} -> class {c}" + (f" ({names[c]})" if c < len(names) else "")
                      for r, c in list(rows.items())[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return (f"{what} not distilled: {shown}{more} (the file holds {len(importance.classes)} of "
            f"{importance.num_classes} classes); classes='{TOP_DISTILLED}' explains each image's "
            "best distilled class, explain_available skips these images")


def _choose_classes(importance: Importance, logits: torch.Tensor, classes: Classes
                    ) -> torch.Tensor:
    """The class of each image: given, its top-1, or its best distilled class."""
    if classes is None:
        return logits.argmax(1)
    if isinstance(classes, str):
        if classes != TOP_DISTILLED:
            raise ValueError(f"classes={classes!r}: give class indices, None (top-1) or "
                             f"{TOP_DISTILLED!r}")
        held = torch.as_tensor(importance.classes, device=logits.device)
        return held[logits[:, held].argmax(1)]
    return _as_classes(classes, len(logits), logits.device)


def _checked_request(model: nn.Module, importance: Importance, images: torch.Tensor,
                     classes: Classes, layers: Sequence[str] | None, check_model: bool
                     ) -> tuple[list[str], torch.Tensor | None]:
    """Every check that needs no forward pass; returns the layers and the given classes."""
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if check_model:
        importance.check_model(model)
    layers = list(layers or importance.layers)
    importance.require(layers=layers)
    given = None
    if classes is not None and not isinstance(classes, str):
        given = _as_classes(classes, len(images), images.device)
        check_class_range(given.tolist(), importance.num_classes)
    return layers, given


def explain_available(model: nn.Module, importance: Importance, images: torch.Tensor,
                      classes: Classes = None, *, layers: Sequence[str] | None = None,
                      size: tuple[int, int] | None = None, positive: bool = True,
                      refine_power: float = REFINE_POWER, check_model: bool = True
                      ) -> Explanation:
    """Maps of the images whose class the importance holds; the others are skipped with the
    reason (see Explanation). Arguments as :func:`explain`."""
    layers, given = _checked_request(model, importance, images, classes, layers, check_model)
    split = split_model(model, layers)
    size = size or tuple(images.shape[-2:])
    with torch.inference_mode():
        acts, logits = split.forward(images)
        cls = given if given is not None else _choose_classes(importance, logits, classes)
        held = torch.zeros(max(importance.num_classes, int(cls.max()) + 1), dtype=torch.bool)
        held[importance.classes] = True
        ok = held[cls.cpu()]
        rows = ok.nonzero().flatten().tolist()
        why = "top-1 class" if classes is None else "class"
        names = importance.class_names or []
        skipped = {r: f"its {why} {c}{f' ({names[c]})' if c < len(names) else ''} is not "
                      "distilled" for r, c in ((r, int(cls[r])) for r in
                                               (~ok).nonzero().flatten().tolist())}
        index = torch.as_tensor(rows, dtype=torch.long, device=images.device)
        powers = refine_layer_powers(importance, layers, refine_power)
        maps = []
        for layer in layers:
            a = acts[layer]
            w = importance.weights[layer].to(a.device)
            if a.shape[1] != w.shape[1]:
                raise ValueError(f"layer {layer} has {a.shape[1]} channels, the importance "
                                 f"{w.shape[1]}")
            maps.append(layer_maps(a, w, index, cls[index], size, positive=positive,
                                   power=powers[layer])
                        if rows else images.new_zeros((0, *size)))
    return Explanation(refine(maps), rows, cls, logits, skipped)


def explain(model: nn.Module, importance: Importance, images: torch.Tensor,
            classes: Classes = None, *, layers: Sequence[str] | None = None,
            size: tuple[int, int] | None = None, positive: bool = True,
            refine_power: float = REFINE_POWER, check_model: bool = True) -> torch.Tensor:
    """CHIP maps (B, H, W) in [0, 1] for ``images`` (B, 3, H, W) and one class per image.

    ``classes``: None explains each image's top-1 class; ``"top-distilled"`` each image's
    highest-scoring class among those the importance holds; or the class indices (one, or one
    per image). With several layers (by default all of the importance's) the result is the
    Refined CHIP map; with one, that layer's CHIP map. ``size`` defaults to the images' size.
    ``positive`` (default) weights each layer's channels by their positive importance only;
    ``positive=False`` uses every sign, as METHOD.md writes it (docs/evaluation.md measures
    both). ``refine_power``: in a Refined map, the activations of each layer with a non-affine
    tail enter at this power (``refine_layer_powers``); 1.0 gives METHOD.md's product of plain
    maps. The model must be the one the importance was distilled from (checked by fingerprint
    unless ``check_model=False``).

    A class index the model does not have raises ValueError; an image whose class the file does
    not hold raises ClassNotDistilledError naming it (given classes are checked before any
    forward pass). :func:`explain_available` explains such a batch partly instead.
    """
    _, given = _checked_request(model, importance, images, classes, layers, check_model)
    if given is not None:
        absent = set(importance.missing_classes(given.tolist()))
        rows = {r: c for r, c in enumerate(given.tolist()) if c in absent}
        if rows:
            raise ClassNotDistilledError(not_distilled_message(importance, rows, "classes"),
                                         rows)
    result = explain_available(model, importance, images, classes, layers=layers, size=size,
                               positive=positive, refine_power=refine_power,
                               check_model=False)
    if result.skipped:
        rows = {r: int(result.classes[r]) for r in result.skipped}
        what = "top-1 classes" if classes is None else "classes"
        raise ClassNotDistilledError(not_distilled_message(importance, rows, what), rows)
    return result.maps
