"""Loading the classifiers the command line works on, and the preprocessing each was trained with.

Owns finding an architecture, reading its weights, and the one rule that gives a model's
preprocessing (``preprocess_of``); the geometry itself is ``chip_fast.data.preprocess``'s."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import Preprocess
from .checkpoints import load_strict, read_state_dict
from .efficientnet_lite import VARIANTS, EfficientNetLite, lite_preprocess, load_efficientnet_lite
from .timm_models import PREFIX, is_timm_model, load_timm, timm_preprocess


def load_model(arch: str, weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """A classifier in eval mode: ``efficientnet_lite0`` / ``1`` / ``2`` (weights from their pip
    packages),
    ``timm:<name>`` (any timm model, ``chip_fast.models.timm_models``) or any torchvision
    classifier, from a state_dict file or, without one, the library's default pretrained
    weights (which needs internet the first time)."""
    if arch.startswith(PREFIX):
        return load_timm(arch[len(PREFIX):], weights).to(device).eval()
    if arch in VARIANTS:
        return load_efficientnet_lite(arch, weights).to(device).eval()
    import torchvision
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(f"unknown --arch {arch!r}; torchvision classifiers: {', '.join(available)}"
                         " (or efficientnet_lite0/1/2, or timm:<name> for a timm model)")
    if weights is None:
        return _pretrained(arch).to(device).eval()
    path = Path(weights)
    state = read_state_dict(path)
    model = load_strict(torchvision.models.get_model(arch), state, path, f"torchvision's {arch}")
    return model.to(device).eval()


def preprocess_of(model: nn.Module, **overrides) -> Preprocess:
    """The preprocessing ``model`` was trained with: its family's normalisation (the Lite models
    take RGB in [-1, 1]; a timm model, recognised by its ``pretrained_cfg``, its own data
    config: size, crop, interpolation, mean and std; the others torchvision's ImageNet mean and
    std); ``overrides`` change the geometry (e.g. ``mode="resize"`` for pre-scaled photos).
    Every place that turns photos into inputs for a model asks this function."""
    if isinstance(model, EfficientNetLite):
        native = {"size": model.image_size, "resize": model.image_size + 32}
        return lite_preprocess(**{**native, **overrides})
    if is_timm_model(model):
        return timm_preprocess(model, **overrides)
    return replace(Preprocess(), **overrides)


def _pretrained(arch: str) -> nn.Module:
    """torchvision's pretrained ``arch``, from its cache or downloaded; a failed download says
    how to give the weights instead."""
    import torchvision
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except OSError as e:   # URLError, HTTPError, timeouts, a read-only cache
        raise ValueError(
            f"could not download torchvision's pretrained weights of {arch} ({e}); without "
            f"internet, pass a state_dict file with --weights (weights= in Python): one saved "
            f"with torch.save(model.state_dict(), 'weights.pth') on a machine that has them, "
            f"or torchvision's cached file from ~/.cache/torch/hub/checkpoints/") from e
