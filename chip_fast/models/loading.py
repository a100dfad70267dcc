"""Loading the classifiers the command line works on, and the preprocessing each was trained with.

Owns finding an architecture, reading its weights, and the one rule that gives a model's
preprocessing (``preprocess_of``); the geometry itself is ``chip_fast.data.preprocess``'s."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..data.preprocess import Preprocess
from .efficientnet_lite import EfficientNetLite0, lite_preprocess, load_efficientnet_lite0


def load_model(arch: str, weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """A classifier in eval mode: ``efficientnet_lite0`` (weights from its pip package) or any
    torchvision classifier, from a state_dict file or, without one, torchvision's default
    pretrained weights (which needs internet the first time)."""
    if arch == "efficientnet_lite0":
        return load_efficientnet_lite0(None if weights is None else str(weights)).to(device).eval()
    import torchvision
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(f"unknown --arch {arch!r}; torchvision classifiers: {', '.join(available)}"
                         " (or efficientnet_lite0)")
    if weights is None:
        return _pretrained(arch).to(device).eval()
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds for a file it cannot read
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise ValueError(f"{path} cannot be read as a PyTorch state_dict ({detail}); give a "
                         "file written by torch.save(model.state_dict(), path)") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict (a dict of "
                         "tensors, as torch.save(model.state_dict(), path) writes)")
    model = torchvision.models.get_model(arch)
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        raise ValueError(f"{path} is not a state_dict of torchvision's {arch}: "
                         f"{_keys(missing, 'missing')}{_keys(unexpected, 'unexpected')}".rstrip("; "))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:   # same keys, other shapes: torch's message names them
        raise ValueError(f"{path} does not fit torchvision's {arch}: {str(e)[:600]}") from e
    return model.to(device).eval()


def preprocess_of(model: nn.Module, **overrides) -> Preprocess:
    """The preprocessing ``model`` was trained with: its family's normalisation (the Lite models
    take RGB in [-1, 1]; the others torchvision's ImageNet mean and std); ``overrides`` change
    the geometry (e.g. ``mode="resize"`` for pre-scaled photos). Every place that turns photos
    into inputs for a model asks this function."""
    if isinstance(model, EfficientNetLite0):
        return lite_preprocess(**overrides)
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


def _key_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


def _keys(keys: list[str], what: str) -> str:
    """'3 missing keys (conv1.weight, bn1.weight, fc.bias); ' with a few named."""
    if not keys:
        return ""
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''} ({shown}); "
