"""Distilled channel importance in memory: the ``Importance`` object, and the model it belongs to.

``Importance`` holds the (classes x channels) weights per layer with everything that produced
them: the model's fingerprint (``chip_fast.models.fingerprint``; ``check_model`` refuses another model),
the settings, class ids and names, and the sufficient statistics (G, r and the per-fold raw
sums), so the sparse fit can be redone with another penalty without redistilling
(``Importance.refit``, math in ``chip_fast.solve``). The file format and its integrity check are
``chip_fast.importance.file``; ``save`` and ``load_importance`` are its entry points.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..models.fingerprint import model_change
from ..solve.refit import held_out_r2, refit_importance
from ..solve.stability import samples_for
from .file import ImportanceFileError, metadata_of, read_fields, write_importance


@dataclass
class Importance:
    """Distilled channel importance of one model at one or more layers.

    ``weights[layer]`` is a float32 tensor (num_classes, channels) in the model's output order;
    rows of classes that were not distilled are zero (``classes`` lists those that were).
    """
    weights: dict[str, torch.Tensor]
    classes: list[int]
    num_classes: int
    fingerprint: dict[str, Any]
    settings: dict[str, Any]
    class_ids: list[str] | None = None
    class_names: list[str] | None = None
    gram: dict[str, torch.Tensor] = field(default_factory=dict)   # (K, K) float64
    r: dict[str, torch.Tensor] = field(default_factory=dict)      # (len(classes), K) float64
    # The raw streamed sums per fold of samples (sample i in fold i % settings["folds"]):
    # sum z*y (len(classes), F, K), sum y and sum y^2 (len(classes), F), float64. With the mask
    # moments (regenerated from the seed) they give G and r of any set of folds.
    sum_zy: dict[str, torch.Tensor] = field(default_factory=dict)
    sum_y: dict[str, torch.Tensor] = field(default_factory=dict)
    sum_yy: dict[str, torch.Tensor] = field(default_factory=dict)
    fill_mean: dict[str, torch.Tensor] = field(default_factory=dict)  # (K,) channel means
    fill_std: dict[str, torch.Tensor] = field(default_factory=dict)   # (K,) channel stds
    # How stable the fit is (chip_fast.solve.stability.stability), per layer: the predicted Pearson r
    # of each class's weights with another seed's (len(classes),) float64, and each weight's
    # standard error (len(classes), K) float32; absent in files written before they were kept.
    agreement: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_se: dict[str, torch.Tensor] = field(default_factory=dict)
    # chip_fast.atlas.collect.ChannelAtlas: each channel's strongest distillation patches (atlas=k)
    atlas: Any = None

    @property
    def layers(self) -> list[str]:
        return list(self.weights)

    def channels(self, layer: str) -> int:
        return self.weights[layer].shape[1]

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model other than the one this was distilled from, with the reason."""
        why = model_change(self.fingerprint, model)
        if why:
            raise ImportanceFileError(f"this importance does not belong to the model: {why}")

    def missing_layers(self, layers: Iterable[str]) -> list[str]:
        """The layers of ``layers`` this importance was not distilled at, in order."""
        return [l for l in layers if l not in self.weights]

    def missing_classes(self, classes: Iterable[int]) -> list[int]:
        """The classes of ``classes`` this importance does not hold, in order."""
        held = set(self.classes)
        return [int(c) for c in classes if int(c) not in held]

    def require(self, *, layers: Iterable[str] = (), classes: Iterable[int] = (),
                hint: str = "") -> None:
        """Refuse ``layers`` or ``classes`` this importance does not hold, before any work: a
        ValueError naming them and what the file holds, then ``hint`` (what to do instead)."""
        layers = self.missing_layers(layers)
        if layers:
            raise ValueError(f"layers {layers} were not distilled; the file holds {self.layers}")
        absent = self.missing_classes(classes)
        if absent:
            held = sorted(self.classes)
            shown = ", ".join(map(str, held[:12])) + (", ..." if len(held) > 12 else "")
            raise ValueError(f"classes {', '.join(map(str, absent[:10]))} are not distilled in "
                             f"this importance file (it holds {len(held)} of "
                             f"{self.num_classes} classes: {shown}){hint}")

    def standard_error(self, layer: str, cls: int) -> torch.Tensor:
        """(K,) standard errors of class ``cls``'s weights at ``layer`` (NaN where the file
        does not keep them)."""
        if layer not in self.weight_se or cls not in self.classes:
            return torch.full((self.channels(layer),), float("nan"))
        return self.weight_se[layer][self.classes.index(cls)].float()

    def samples_needed(self, target: float = 0.95) -> dict[str, torch.Tensor]:
        """Per layer, the samples per class at which each class's predicted seed agreement
        (``agreement``) would reach ``target``: how many to ask for in a rerun.
        See ``chip_fast.solve.stability.samples_for``."""
        return {layer: samples_for(self, layer, target) for layer in self.layers}

    def metadata(self) -> dict[str, Any]:
        """The file's ``chip_fast`` metadata entry (format, layers, classes, settings, ...)."""
        return metadata_of(self)

    def save(self, path: str | Path) -> Path:
        """Write the file atomically, with integrity digests of every tensor and of the
        metadata (``chip_fast.importance.file``); returns its path."""
        return write_importance(self, path)

    def refit(self, alpha: float | str, *, alphas: Sequence[float] | None = None,
              nonneg: bool | None = None) -> "Importance":
        """A new Importance from the same statistics with another penalty: ``alpha`` (lambda_c =
        alpha * lambda_max_c, the weights a distillation with that alpha gives), or
        ``alpha="heldout"``: per class, the alpha of ``alphas`` that predicts held-out samples
        best (recorded in ``settings["alpha_chosen"]``). ``nonneg`` defaults to this one's.
        See ``chip_fast.solve.refit.refit_importance``."""
        return refit_importance(self, alpha, alphas=alphas, nonneg=nonneg)

    def fit_quality(self, alpha: float | None = None) -> dict[str, torch.Tensor]:
        """Held-out R^2 per layer, one value per class of ``classes``: the fit on folds
        0..F-2 (with this importance's penalty, or ``alpha``) scored on fold F-1.
        See ``chip_fast.solve.refit.held_out_r2``."""
        return held_out_r2(self, alpha)


def load_importance(path: str | Path) -> Importance:
    """Read an importance file, checking it completely: its integrity digests (a damaged or
    hand-edited file is refused, naming what differs), then its structure. Files written before
    the digests load with a warning. Nothing is unpickled (``chip_fast.importance.file``)."""
    return Importance(**read_fields(path))
