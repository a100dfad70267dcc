"""Distilled channel importance in memory: the ``Importance`` object, and the model it belongs to.

``Importance`` holds the (classes x channels) weights per layer with everything that produced
them: the model's fingerprint (``model_fingerprint``; ``check_model`` refuses another model),
the settings, class ids and names, and the sufficient statistics (G, r and the per-fold raw
sums), so the sparse fit can be redone with another penalty without redistilling
(``Importance.refit``, math in ``chip_fast.solve.fit``). The file format and its integrity check are
``chip_fast.importance.file``; ``save`` and ``load_importance`` are its entry points.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn


class ImportanceFileError(ValueError):
    """A file that is not a valid importance file, or does not fit the model it is used with."""


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Architecture and a hash of every parameter and buffer, to tell models apart."""
    shapes = {}
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        shapes[name] = list(t.shape)
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"class": type(model).__name__, "shapes": shapes, "sha256": h.hexdigest()}


# Models already checked against a fingerprint, with the version counters of their tensors then:
# hashing every weight on each explain call would cost more than the maps themselves, and any
# in-place change of a weight (load_state_dict, an optimiser step) bumps a version counter.
_checked: "weakref.WeakKeyDictionary[nn.Module, tuple[str, tuple]]" = weakref.WeakKeyDictionary()


def _versions(model: nn.Module) -> tuple:
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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a
    file, and a crash leaves the old file in place. The file gets the permissions of any file
    the user creates (0666 less the umask), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        try:   # Linux states the umask; reading it elsewhere means setting it for a moment
            status = Path("/proc/self/status").read_text()
            umask = int(status.split("Umask:", 1)[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            umask = os.umask(0o022)
            os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    # chip_fast.atlas.collect.ChannelAtlas: each channel's strongest distillation patches (atlas=k)
    atlas: Any = None

    @property
    def layers(self) -> list[str]:
        return list(self.weights)

    def channels(self, layer: str) -> int:
        return self.weights[layer].shape[1]

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model other than the one this was distilled from, with the reason."""
        key = (self.fingerprint.get("sha256", ""), _versions(model))
        if _checked.get(model) == key:
            return
        why = fingerprint_mismatch(self.fingerprint, model)
        if why:
            raise ImportanceFileError(f"this importance does not belong to the model: {why}")
        _checked[model] = key

    def metadata(self) -> dict[str, Any]:
        """The file's ``chip_fast`` metadata entry (format, layers, classes, settings, ...)."""
        from .file import metadata_of
        return metadata_of(self)

    def save(self, path: str | Path) -> Path:
        """Write the file atomically, with integrity digests of every tensor and of the
        metadata (``chip_fast.importance.file``); returns its path."""
        from .file import write_importance
        return write_importance(self, path)

    def refit(self, alpha: float | str, *, alphas: Sequence[float] | None = None,
              nonneg: bool | None = None) -> "Importance":
        """A new Importance from the same statistics with another penalty: ``alpha`` (lambda_c =
        alpha * lambda_max_c, the weights a distillation with that alpha gives), or
        ``alpha="heldout"``: per class, the alpha of ``alphas`` that predicts held-out samples
        best (recorded in ``settings["alpha_chosen"]``). ``nonneg`` defaults to this one's.
        See ``chip_fast.solve.fit.refit_importance``."""
        from ..solve.fit import refit_importance
        return refit_importance(self, alpha, alphas=alphas, nonneg=nonneg)

    def fit_quality(self, alpha: float | None = None) -> dict[str, torch.Tensor]:
        """Held-out R^2 per layer, one value per class of ``classes``: the fit on folds
        0..F-2 (with this importance's penalty, or ``alpha``) scored on fold F-1.
        See ``chip_fast.solve.fit.held_out_r2``."""
        from ..solve.fit import held_out_r2
        return held_out_r2(self, alpha)


def load_importance(path: str | Path) -> Importance:
    """Read an importance file, checking it completely: its integrity digests (a damaged or
    hand-edited file is refused, naming what differs), then its structure. Files written before
    the digests load with a warning. Nothing is unpickled (``chip_fast.importance.file``)."""
    from .file import read_importance
    return read_importance(path)
