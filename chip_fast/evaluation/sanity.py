"""The model-randomisation sanity check (Adebayo et al., 2018) applied to CHIP as a whole.

A gradient method explains the randomised copy by running on it. CHIP's explanation has two
parts, the importance learned from data and the map computed from one forward; keeping the
trained model's importance while the top blocks are randomised tests only the second part, so
a map can pass or fail for the wrong reason (at a layer below the randomised blocks its
activations do not change at all, and the map comes out identical by construction).
``Redistill`` gives the check the method's whole path: the randomised copy is distilled again
on the same photos with every setting of the trained importance, and its maps use that.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

import torch

from ..distill.settings import DistillSettings
from ..importance.core import Importance
from ..models.fingerprint import model_fingerprint

# Recorded settings the rerun leaves out: the atlas changes no weight, only costs time.
_DERIVED = ("atlas",)
# What a file written before a setting existed was computed with (today's default differs).
_BEFORE = {"control": "none", "prefix_dtype": "float32"}


def replay_settings(importance: Importance) -> dict[str, Any]:
    """The ``distill_all_classes`` keywords that reproduce ``importance``'s run (every
    DistillSettings field the file records; the atlas, which does not change the weights,
    left out; a file written before ``control`` or ``prefix_dtype`` existed, with what it
    used then)."""
    names = {f.name for f in fields(DistillSettings)} - set(_DERIVED)
    settings = importance.settings or {}
    missing = sorted(n for n in ("samples_per_class", "seed", "p_keep", "fill", "response",
                                 "alpha") if n not in settings)
    if missing:
        raise ValueError(f"the importance file records no {', '.join(missing)}: its run "
                         f"cannot be repeated on the randomised model")
    return {**_BEFORE, **{k: v for k, v in settings.items() if k in names}}


class Redistill:
    """``Redistill(importance, data)(randomised_model)`` -> the Importance of that model,
    distilled from ``data`` (anything ``distill_all_classes`` reads) at the same layers and
    classes with the same settings. One distillation per model weights (by fingerprint: the
    check makes a new copy per ``evaluate`` call, with the same weights for the same seed),
    shared by every CHIP map function that holds this object."""

    def __init__(self, importance: Importance, data: Any, *,
                 distill: Callable[..., Importance] | None = None, **options: Any) -> None:
        self.settings = replay_settings(importance)
        self.layers, self.classes = list(importance.layers), list(importance.classes)
        self.data, self.options = data, {"progress": False, **options}
        self._distill = distill
        self._done: dict[str, Importance] = {}

    def __call__(self, model: torch.nn.Module) -> Importance:
        key = model_fingerprint(model)["sha256"]
        if key not in self._done:
            distill = self._distill
            if distill is None:
                from ..distill.run import distill_all_classes as distill
            self._done[key] = distill(model, self.data, self.layers, classes=self.classes,
                                      **self.settings, **self.options)
        return self._done[key]
