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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

# ClassNotDistilledError and check_class_range are defined with the Importance (top_channels
# raises them too) and are importable from here as before.
from ..importance.core import (ClassNotDistilledError, Importance, check_class_range,
                               load_importance)
from ..ops.class_maps import class_maps, normalize_maps
from ..models.split import split_model

# classes="top-distilled": each image's highest-scoring class among those the file holds.
TOP_DISTILLED = "top-distilled"

Classes = int | Sequence[int] | torch.Tensor | str | None
Layers = str | Iterable[str] | None
# Said wherever an input is refused for its type or shape.
INPUT_HINT = ("chip_fast.preprocess_of(model) turns a PIL image into the model's input; stack "
              "those into a batch")


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


def as_layers(layers: Layers, importance: Importance) -> list[str]:
    """``layers`` as a list: one name (a str) or several; None or empty, the importance's."""
    if isinstance(layers, str):
        return [layers]
    if layers is not None and not isinstance(layers, Iterable):
        raise TypeError(f"layers must be a layer name or a list of them, got {layers!r}; the "
                        f"importance holds {importance.layers}")
    return list(layers or importance.layers)


def check_refine_power(power: float) -> float:
    """``refine_power`` as a float, refused unless a finite number >= 0 (0 counts a channel
    as on or off; a negative, infinite or NaN power would make every map NaN or empty)."""
    try:
        value = float(power)
    except (TypeError, ValueError):
        raise TypeError(f"refine_power must be a number >= 0, got {power!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"refine_power={power!r} is not allowed: it must be a finite number "
                         ">= 0 (1 gives METHOD.md's product, the default "
                         f"{REFINE_POWER}, 0 counts each channel as on or off)")
    return value


def check_images(images: torch.Tensor) -> None:
    """Refuse what is not a floating-point (B, C, H, W) batch of finite values."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (B, C, H, W), got "
                        f"{type(images).__name__}; {INPUT_HINT}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor (B, C, H, W) as the model "
                        f"takes it, got dtype {images.dtype}; {INPUT_HINT}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}; "
                         f"{INPUT_HINT}")
    if images.numel() == 0:
        raise ValueError(f"images is empty (shape {tuple(images.shape)})")
    finite = torch.isfinite(images).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (f" and {len(bad) - 10} more"
                                                 if len(bad) > 10 else "")
        raise ValueError(f"image {shown} of the batch contains NaN or infinite values: a map "
                         "of them would mean nothing")


def _as_importance(importance: Importance | str | Path) -> Importance:
    """An Importance, or the one the file at that path holds (``load_importance``)."""
    if isinstance(importance, (str, Path)):
        return load_importance(importance)
    if not isinstance(importance, Importance) and not hasattr(importance, "require"):
        raise TypeError(f"importance must be a chip_fast.Importance or the path of an "
                        f"importance file, got {type(importance).__name__}")
    return importance


def _checked_request(model: nn.Module, importance: Importance | str | Path,
                     images: torch.Tensor, classes: Classes, layers: Layers,
                     refine_power: float, check_model: bool
                     ) -> tuple[Importance, list[str], torch.Tensor | None]:
    """Every check that needs no forward pass; returns the importance, the layers and the
    given classes."""
    importance = _as_importance(importance)
    check_images(images)
    check_refine_power(refine_power)
    if check_model:
        importance.check_model(model)
    layers = as_layers(layers, importance)
    importance.require(layers=layers)
    given = None
    if isinstance(classes, str) and classes != TOP_DISTILLED:
        raise ValueError(f"classes={classes!r}: give class indices, None (top-1) or "
                         f"{TOP_DISTILLED!r}")
    if classes is not None and not isinstance(classes, str):
        given = _as_classes(classes, len(images), images.device)
        check_class_range(given.tolist(), importance.num_classes)
    return importance, layers, given


def _input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes; None where it has none."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else None


def _forward(split, model: nn.Module, images: torch.Tensor):
    """The split model's activations and logits; a failure that the images' channel count
    explains is said in one sentence instead of the trace's."""
    try:
        return split.forward(images)
    except RuntimeError as e:
        expected = _input_channels(model)
        if isinstance(e, torch.OutOfMemoryError) or expected in (None, images.shape[1]):
            raise
        raise ValueError(f"images have {images.shape[1]} channel"
                         f"{'s' if images.shape[1] != 1 else ''} (shape "
                         f"{tuple(images.shape)}), the model takes {expected}; "
                         f"{INPUT_HINT}") from e


def _explain(model: nn.Module, importance: Importance, images: torch.Tensor, classes: Classes,
             given: torch.Tensor | None, layers: list[str], size: tuple[int, int] | None,
             positive: bool, refine_power: float) -> Explanation:
    """``explain_available`` after its checks."""
    split = split_model(model, layers)
    size = size or tuple(images.shape[-2:])
    with torch.inference_mode():
        acts, logits = _forward(split, model, images)
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
            if rows and not bool(torch.isfinite(maps[-1]).all()):
                raise ValueError(_not_finite(layer, powers[layer], refine_power))
    return Explanation(refine(maps), rows, cls, logits, skipped)


def _not_finite(layer: str, power: float, refine_power: float) -> str:
    """Why the map of ``layer`` came out NaN or infinite, in one sentence."""
    if power != 1.0:
        return (f"the map at layer {layer} is NaN or infinite: its activations raised to "
                f"refine_power={refine_power:g} overflow; use a smaller refine_power (the "
                f"default is {REFINE_POWER})")
    return (f"the map at layer {layer} is NaN or infinite: the model's activations there are "
            "not finite for these images")


def explain_available(model: nn.Module, importance: Importance | str | Path,
                      images: torch.Tensor, classes: Classes = None, *, layers: Layers = None,
                      size: tuple[int, int] | None = None, positive: bool = True,
                      refine_power: float = REFINE_POWER, check_model: bool = True
                      ) -> Explanation:
    """Maps of the images whose class the importance holds; the others are skipped with the
    reason (see Explanation). Arguments and the errors of a bad request as :func:`explain`."""
    importance, layers, given = _checked_request(model, importance, images, classes, layers,
                                                 refine_power, check_model)
    return _explain(model, importance, images, classes, given, layers, size, positive,
                    float(refine_power))


def explain(model: nn.Module, importance: Importance | str | Path, images: torch.Tensor,
            classes: Classes = None, *, layers: Layers = None,
            size: tuple[int, int] | None = None, positive: bool = True,
            refine_power: float = REFINE_POWER, check_model: bool = True) -> torch.Tensor:
    """CHIP maps (B, H, W) in [0, 1] for ``images`` (B, 3, H, W) and one class per image.

    ``importance``: an Importance, or the path of an importance file (read with
    ``load_importance``). ``images``: a floating-point batch as the model takes it
    (``chip_fast.preprocess_of(model)`` makes one image of a PIL image), finite.
    ``classes``: None explains each image's top-1 class; ``"top-distilled"`` each image's
    highest-scoring class among those the importance holds; or the class indices (one, or one
    per image). ``layers``: one layer name or several, by default all of the importance's; with
    several the result is the Refined CHIP map, with one that layer's CHIP map. ``size``
    defaults to the images' size. ``positive`` (default) weights each layer's channels by their
    positive importance only; ``positive=False`` uses every sign, as METHOD.md writes it
    (docs/evaluation.md measures both). ``refine_power`` (a finite number >= 0): in a Refined
    map, the activations of each layer with a non-affine tail enter at this power
    (``refine_layer_powers``); 1.0 gives METHOD.md's product of plain maps, 0 counts each
    channel as on or off. The model must be the one the importance was distilled from (checked
    by fingerprint unless ``check_model=False``).

    A class index the model does not have raises ValueError; an image whose class the file does
    not hold raises ClassNotDistilledError naming it (given classes are checked before any
    forward pass). :func:`explain_available` explains such a batch partly instead. Images that
    are not a floating-point (B, C, H, W) batch raise TypeError or ValueError, as do images with
    NaN or infinite values, a layer the importance lacks and a negative or non-finite
    ``refine_power``; all before the model runs.
    """
    importance, layers, given = _checked_request(model, importance, images, classes, layers,
                                                 refine_power, check_model)
    if given is not None:
        absent = set(importance.missing_classes(given.tolist()))
        rows = {r: c for r, c in enumerate(given.tolist()) if c in absent}
        if rows:
            raise ClassNotDistilledError(not_distilled_message(importance, rows, "classes"),
                                         rows)
    result = _explain(model, importance, images, classes, given, layers, size, positive,
                      float(refine_power))
    if result.skipped:
        rows = {r: int(result.classes[r]) for r in result.skipped}
        what = "top-1 classes" if classes is None else "classes"
        raise ClassNotDistilledError(not_distilled_message(importance, rows, what), rows)
    return result.maps
