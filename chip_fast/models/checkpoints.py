"""Reading weight files: a state_dict from a file a person names, refused in one line when it
is not one, and the keys that differ from a model's, named.

Owns what every loader (torchvision's, timm's) says about a weights file; which architecture the
keys must fit is the loader's."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


def read_state_dict(path: Path, read: Callable[[Path], object] | None = None,
                    expected: str = "a file written by torch.save(model.state_dict(), path)"
                    ) -> dict:
    """The state_dict in ``path``: ``read(path)`` (default: ``torch.load`` with
    ``weights_only=True``, which never unpickles code), unwrapped from a ``{"state_dict": ...}``
    checkpoint. A file that is missing or holds something else is one ValueError line saying
    what to give instead (``expected``)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = read(path) if read is not None else \
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - readers raise many kinds for a file they cannot read
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        detail = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise ValueError(f"{path} cannot be read as a PyTorch state_dict ({detail}); give "
                         f"{expected}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state_dict (a dict of "
                         "tensors, as torch.save(model.state_dict(), path) writes)")
    return state


def load_strict(model: nn.Module, state: dict, path: Path, what: str) -> nn.Module:
    """``model`` with ``state`` loaded strictly; keys or shapes that differ are one ValueError
    line naming a few of them (``what``: "torchvision's resnet18")."""
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(f"{path} is not a state_dict of {what}: "
                         f"{_keys(missing, 'missing')}{_keys(unexpected, 'unexpected')}".rstrip("; "))
    ours = model.state_dict()
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in ours.items()
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if shapes:   # torch's own message is a paragraph; one line, the first few named
        shown = "; ".join(f"{k}: file {a}, model {b}" for k, a, b in shapes[:3])
        raise ValueError(f"{path} does not fit {what}: {len(shapes)} tensor(s) differ in shape "
                         f"({shown}{'; ...' if len(shapes) > 3 else ''}); a classifier trained "
                         "for other classes needs the model built with that many outputs (in "
                         "Python, then chip_fast.distill_all_classes)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {what}: {' '.join(str(e).split())[:600]}") from e
    return model


def _keys(keys: list[str], what: str) -> str:
    """'3 missing keys (conv1.weight, bn1.weight, fc.bias); ' with a few named."""
    if not keys:
        return ""
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''} ({shown}); "
