"""CHIP behind the interfaces other toolkits expect: a pytorch-grad-cam style CAM object and a
Quantus-style ``explain_func``. Both call the core ``chip_fast.maps.explain`` and add no map logic."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..maps.explain import explain
from .peers import name_of_module


def _target_class(t: Any) -> int:
    """pytorch-grad-cam targets (ClassifierOutputTarget) carry ``category``; ints pass through."""
    if isinstance(t, (int, np.integer)):
        return int(t)
    cat = getattr(t, "category", None)
    if cat is None:
        raise TypeError(f"ChipCAM: target {t!r} names no class; CHIP maps are per class, so use "
                        f"ClassifierOutputTarget(class_index) or an int")
    return int(cat)


class ChipCAM:
    """``with ChipCAM(model, imp, target_layers=[model.features[18]]) as cam:
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c), ...])`` -> (B, H, W) float32
    in [0, 1]. ``target_layers=None`` uses the importance's layers (Refined CHIP); several target
    layers give the Refined CHIP over them. ``targets=None`` explains the model's top-1 class.
    ``positive=False``: channel weights of both signs (METHOD.md's formula), see ``explain``."""

    def __init__(self, model: torch.nn.Module, importance: Any,
                 target_layers: Sequence[torch.nn.Module | str] | None = None, *,
                 positive: bool = True) -> None:
        self.model, self.importance, self.positive = model, importance, positive
        self.layers = None if target_layers is None else [
            t if isinstance(t, str) else name_of_module(model, t) for t in target_layers]

    def __call__(self, input_tensor: torch.Tensor, targets: Sequence[Any] | None = None,
                 **_: Any) -> np.ndarray:   # eigen_smooth, aug_smooth: not meaningful for CHIP
        classes = None                     # None: the core explains the top-1 class
        if targets is not None:
            classes = [_target_class(t) for t in targets]
            if len(classes) != len(input_tensor):
                raise ValueError(f"ChipCAM: {len(classes)} targets for {len(input_tensor)} images")
        return _explain(self.model, self.importance, input_tensor, classes, self.layers,
                        self.positive)

    def __enter__(self) -> "ChipCAM":
        return self

    def __exit__(self, *exc: Any) -> bool:
        return False


def explain_func(model: torch.nn.Module, inputs: np.ndarray | torch.Tensor,
                 targets: np.ndarray | Sequence[int] | torch.Tensor, **kwargs: Any) -> np.ndarray:
    """Quantus ``explain_func``: (B, C, H, W) inputs and (B,) targets -> (B, 1, H, W) float32
    CHIP maps. kwargs: ``importance=`` (required), ``layers=``, ``positive=``, ``device=``; others
    are ignored
    (Quantus passes its own)."""
    importance = kwargs.get("importance")
    if importance is None:
        raise ValueError("explain_func needs importance=<chip_fast importance> in its kwargs")
    device = kwargs.get("device") or next(model.parameters()).device
    x = torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs,
                        dtype=torch.float32, device=device)
    classes = [int(c) for c in np.asarray(
        targets.cpu() if torch.is_tensor(targets) else targets).reshape(-1)]
    return _explain(model, importance, x, classes, kwargs.get("layers"),
                    kwargs.get("positive", True))[:, None]


def _explain(model: torch.nn.Module, importance: Any, x: torch.Tensor,
             classes: Sequence[int] | None, layers: str | Sequence[str] | None,
             positive: bool = True) -> np.ndarray:
    kw: dict[str, Any] = {"positive": positive}
    if layers is not None:   # None: the core's default, all the importance's layers
        kw["layers"] = layers   # one name or several; explain checks them
    if getattr(model, "chip_fast_randomized_blocks", None):
        # the sanity check's re-initialised copy: a kept importance of the trained model is
        # applied to the changed activations on purpose (the check of the map step alone), so
        # the fingerprint check must not refuse it
        kw["check_model"] = False
    maps = explain(model, importance, x, None if classes is None else list(classes), **kw)
    return maps.detach().float().cpu().numpy().astype(np.float32, copy=False)


def chip_method(importance: Any, layers: Sequence[str] | None = None, *, positive: bool = True,
                redistill: Callable[[torch.nn.Module], Any] | None = None):
    """CHIP as a ``(model, images, classes) -> (B, H, W)`` map function for ``evaluate``:
    one layer, or the Refined CHIP over several (None: the importance's layers).

    ``redistill`` (a ``chip_fast.evaluation.sanity.Redistill``): the sanity check explains the
    randomised copy with an importance distilled from it, the method's whole path; without it
    the trained importance is kept there and the result says so."""
    def fn(model: torch.nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        return _explain(model, importance, images, classes, layers, positive)
    shown = list(layers) if layers is not None else list(getattr(importance, "layers", []))
    fn.method = ("chip" if len(shown) == 1 else "chip-refined") + ("" if positive else "-signed")
    fn.layer = "+".join(shown)
    if redistill is None:
        fn.sanity = "importance kept"
    else:
        fn.sanity = "re-distilled"
        fn.for_randomized = lambda model: chip_method(redistill(model), layers, positive=positive)
    return fn
