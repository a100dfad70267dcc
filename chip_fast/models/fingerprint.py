"""Telling models apart: the fingerprint an importance file keeps of its model, and the check
that a model is still the one it was taken from.

Hashing every weight costs more than a batch of maps, so a model that passed a check is
remembered with the version counters of its tensors: any in-place change of a weight
(``load_state_dict``, an optimiser step) moves a counter, and the next check hashes again."""
from __future__ import annotations

import hashlib
import weakref
from typing import Any

import torch
from torch import nn


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Architecture and a hash of every parameter and buffer, to tell models apart."""
    shapes = {}
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        shapes[name] = list(t.shape)
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"class": type(model).__name__, "shapes": shapes, "sha256": h.hexdigest()}


def weight_versions(model: nn.Module) -> tuple:
    """Where every parameter and buffer lives and its in-place version: equal tuples mean the
    weights did not change (cheap, no hashing)."""
    return tuple((t.data_ptr(), t._version) for t in
                 list(model.parameters()) + list(model.buffers()))


def fingerprint_mismatch(stored: dict[str, Any], model: nn.Module) -> str | None:
    """Why ``model`` is not the model ``stored`` was taken from, or None if it is."""
    now = model_fingerprint(model)
    if stored.get("class") != now["class"]:
        return f"the file is for a {stored.get('class')}, the model is a {now['class']}"
    a, b = stored.get("shapes", {}), now["shapes"]
    for name in a.keys() | b.keys():
        if a.get(name) != b.get(name):
            return (f"parameter {name!r} has shape {a.get(name)} in the file and {b.get(name)} "
                    "in the model")
    if stored.get("sha256") != now["sha256"]:
        return "the model's weights differ from those the file was distilled with"
    return None


_checked: "weakref.WeakKeyDictionary[nn.Module, tuple[str, tuple]]" = weakref.WeakKeyDictionary()


def model_change(stored: dict[str, Any], model: nn.Module) -> str | None:
    """``fingerprint_mismatch``, remembered per model while its weights keep their versions."""
    key = (stored.get("sha256", ""), weight_versions(model))
    if _checked.get(model) == key:
        return None
    why = fingerprint_mismatch(stored, model)
    if why is None:
        _checked[model] = key
    return why
