"""Loading the classifiers the command line works on.

Owns finding an architecture and reading its weights; how its inputs are preprocessed is
``chip_fast.preprocess``'s."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def load_model(arch: str, weights: str | Path | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """A classifier in eval mode: ``efficientnet_lite0`` (weights from its pip package) or any
    torchvision classifier, from a state_dict file or, without one, torchvision's default
    pretrained weights (which needs internet the first time)."""
    if arch == "efficientnet_lite0":
        from .efficientnet_lite import load_efficientnet_lite0
        return load_efficientnet_lite0(None if weights is None else str(weights)).to(device).eval()
    import torchvision
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(f"unknown --arch {arch!r}; torchvision classifiers: {', '.join(available)}"
                         " (or efficientnet_lite0)")
    if weights is None:
        model = torchvision.models.get_model(arch, weights="DEFAULT")
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model = torchvision.models.get_model(arch)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path} is not a state_dict of torchvision's {arch}: {e}") from e
    return model.to(device).eval()
