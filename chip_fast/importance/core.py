"""Distilled channel importance in memory: the ``Importance`` object, and the model it belongs to.

``Importance`` holds the (classes x channels) weights per layer with everything that produced
them: the model's fingerprint (``chip_fast.models.fingerprint``; ``check_model`` refuses another model),
the settings, class ids and names, and the sufficient statistics (G, r and the per-fold raw
sums), so the sparse fit can be redone with another penalty without redistilling
(``Importance.refit``, math in ``chip_fast.solve``). The file format and its integrity check are
``chip_fast.importance.file``; ``save`` and ``load_importance`` are its entry points.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..models.fingerprint import model_change
from ..solve.refit import held_out_r2, refit_importance
from ..solve.stability import samples_for
from .file import ImportanceFileError, metadata_of, read_fields, write_importance


class ClassNotDistilledError(ValueError):
    """Classes asked of an importance that does not hold them: images asked to be explained for
    them (``rows``: image index -> its class that was not distilled) or a class's channels
    (``rows`` empty). ``classes``: the classes that were not distilled, ascending."""

    def __init__(self, message: str, rows: dict[int, int] | None = None,
                 classes: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.rows = dict(rows or {})
        self.classes = sorted({int(c) for c in classes} | set(self.rows.values()))


def check_class_range(classes: Sequence[int], num_classes: int) -> None:
    """Refuse class indices the model does not have, saying how many it has."""
    bad = sorted({int(c) for c in classes if not 0 <= int(c) < num_classes})
    if bad:
        raise ValueError(f"class {', '.join(map(str, bad[:10]))} does not exist: the model has "
                         f"{num_classes} classes (0-{num_classes - 1})")


def _index(value: Any, what: str) -> int:
    """``value`` as an int (a Python, NumPy or 0-d tensor integer), or a TypeError naming it."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r} "
                        f"({type(value).__name__})") from None


@dataclass(repr=False)
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

    def require(self, *, layers: str | Iterable[str] = (), classes: int | Iterable[int] = (),
                hint: str = "") -> None:
        """Refuse ``layers`` or ``classes`` (one or several) this importance does not hold,
        before any work: a ValueError naming the layers and what the file holds, or a
        ClassNotDistilledError (a ValueError) naming the classes and those the file holds; then
        ``hint`` (what to do instead)."""
        layers = self.missing_layers([layers] if isinstance(layers, str) else layers)
        if layers:
            raise ValueError(f"layers {layers} were not distilled; the file holds {self.layers}")
        absent = self.missing_classes([classes] if isinstance(classes, int) else classes)
        if absent:
            held = sorted(self.classes)
            shown = ", ".join(map(str, held[:12])) + (", ..." if len(held) > 12 else "")
            raise ClassNotDistilledError(
                f"classes {', '.join(map(str, absent[:10]))} are not distilled in this importance "
                f"file (it holds {len(held)} of {self.num_classes} classes: {shown}){hint}",
                classes=absent)

    def check_channel_request(self, layer: str, cls: int, n: int | None = None) -> None:
        """Refuse a request for class ``cls``'s channels at ``layer`` (``top_channels``) that
        this importance cannot answer: a layer it lacks (listing its layers), a class the model
        does not have, a class it did not distil (ClassNotDistilledError listing those it
        holds), a count ``n`` that is not an integer >= 1 (``chip_fast.top_channels``)."""
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str), got {layer!r}; this importance "
                            f"holds {self.layers}")
        self.require(layers=[layer])
        cls = _index(cls, "the class")
        check_class_range([cls], self.num_classes)
        self.require(classes=[cls], hint="; distil it, or ask for one of these")
        if n is not None and _index(n, "the number of channels n") < 1:
            raise ValueError(f"n={n}: the number of channels to show must be 1 or more")

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

    def __repr__(self) -> str:
        """One line: each layer's (classes x channels) weights and estimator, the distilled
        classes, the samples per class, the model's class and fingerprint abbreviated."""
        st = self.settings if isinstance(self.settings, dict) else {}
        estimators = st.get("estimators") if isinstance(st.get("estimators"), dict) else {}
        layers = ", ".join(
            f"{layer} ({w.shape[0]}x{w.shape[1]}"
            + (f", {estimators[layer]})" if layer in estimators else ")")
            for layer, w in self.weights.items())
        if not estimators and st.get("estimator"):
            layers += f"; estimator {st['estimator']}"
        fp = self.fingerprint if isinstance(self.fingerprint, dict) else {}
        model = f"{fp.get('class', '?')} sha256 {str(fp.get('sha256', '?'))[:12]}"
        return (f"Importance({len(self.weights)} layers (classes x channels): {layers}; "
                f"{len(self.classes)} of {self.num_classes} classes distilled; "
                f"samples_per_class {st.get('samples_per_class')}; model {model}"
                f"{'; with atlas' if self.atlas is not None else ''})")


def load_importance(path: str | Path) -> Importance:
    """Read an importance file, checking it completely: its integrity digests (a damaged or
    hand-edited file is refused, naming what differs), then its structure. Files written before
    the digests load with a warning. Nothing is unpickled (``chip_fast.importance.file``)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"load_importance takes the path of an importance file (str or Path), "
                        f"got {type(path).__name__}")
    return Importance(**read_fields(path))
