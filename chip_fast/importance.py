"""The importance file: distilled (classes x channels) weights per layer, self-describing.

Format: safetensors (tensors ``weights/<layer>``, ``gram/<layer>``, ``r/<layer>``) with one
metadata entry ``chip_fast`` holding JSON: format name and version, the model's fingerprint,
layers, channel counts, classes, class names, every distillation setting, seed and sample count.
safetensors never unpickles, so loading a stranger's file cannot run code. The sufficient
statistics are kept so the sparse fit can be redone with another penalty without redistilling.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "chip_fast.importance"
VERSION = 1


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
    file, and a crash leaves the old file in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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
        return {
            "format": FORMAT, "version": VERSION,
            "layers": self.layers,
            "channels": {layer: self.channels(layer) for layer in self.layers},
            "num_classes": self.num_classes, "classes": self.classes,
            "class_ids": self.class_ids, "class_names": self.class_names,
            "model": self.fingerprint, "settings": self.settings,
        }

    def save(self, path: str | Path) -> Path:
        """Write the file atomically; returns its path."""
        from safetensors.torch import save_file
        path = Path(path)
        tensors = {f"weights/{k}": v.detach().to("cpu", torch.float32).contiguous()
                   for k, v in self.weights.items()}
        tensors.update({f"gram/{k}": v.detach().cpu().contiguous() for k, v in self.gram.items()})
        tensors.update({f"r/{k}": v.detach().cpu().contiguous() for k, v in self.r.items()})
        for name in ("sum_zy", "sum_y", "sum_yy"):
            tensors.update({f"{name}/{k}": v.detach().to("cpu", torch.float64).contiguous()
                            for k, v in getattr(self, name).items()})
        tensors.update({f"fill_mean/{k}": v.detach().to("cpu", torch.float32).contiguous()
                        for k, v in self.fill_mean.items()})
        tensors.update({f"fill_std/{k}": v.detach().to("cpu", torch.float32).contiguous()
                        for k, v in self.fill_std.items()})
        meta = {"chip_fast": json.dumps(self.metadata())}
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return path


def load_importance(path: str | Path) -> Importance:
    """Read an importance file, checking it completely; a malformed file is refused with the
    reason. Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"importance file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("chip_fast")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportanceFileError(f"{path} is not a safetensors file: {e}") from e

    def bad(why: str) -> ImportanceFileError:
        return ImportanceFileError(f"{path} is not a valid chip_fast importance file: {why}")

    if raw is None:
        raise bad("it has no 'chip_fast' metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise bad(f"its metadata is not JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise bad(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise bad(f"format version {meta.get('version')} is not supported (this chip_fast "
                  f"reads version {VERSION})")
    for key in ("layers", "channels", "num_classes", "classes", "model", "settings"):
        if key not in meta:
            raise bad(f"metadata lacks {key!r}")
    weights, gram, r, fill_mean, fill_std = {}, {}, {}, {}, {}
    sums: dict[str, dict[str, torch.Tensor]] = {"sum_zy": {}, "sum_y": {}, "sum_yy": {}}
    folds = meta.get("settings", {}).get("folds")
    n, classes = meta["num_classes"], meta["classes"]
    if any(not isinstance(c, int) or not 0 <= c < n for c in classes):
        raise bad(f"classes must be indices below num_classes={n}")
    for layer in meta["layers"]:
        w = tensors.get(f"weights/{layer}")
        k = meta["channels"].get(layer)
        if w is None:
            raise bad(f"tensor weights/{layer} is missing")
        if tuple(w.shape) != (n, k):
            raise bad(f"weights/{layer} has shape {tuple(w.shape)}, metadata says ({n}, {k})")
        if not torch.isfinite(w).all():
            raise bad(f"weights/{layer} contains NaN or Inf")
        weights[layer] = w
        if f"gram/{layer}" in tensors:
            gram[layer] = tensors[f"gram/{layer}"]
            r[layer] = tensors.get(f"r/{layer}")
            if r[layer] is None or tuple(gram[layer].shape) != (k, k) \
                    or tuple(r[layer].shape) != (len(classes), k):
                raise bad(f"the statistics of layer {layer} are missing or misshapen")
        if f"sum_zy/{layer}" in tensors:
            if not isinstance(folds, int) or folds < 1:
                raise bad(f"it holds per-fold sums but settings.folds is {folds!r}")
            for name, shape in (("sum_zy", (len(classes), folds, k)),
                                ("sum_y", (len(classes), folds)), ("sum_yy", (len(classes), folds))):
                t = tensors.get(f"{name}/{layer}")
                if t is None or tuple(t.shape) != shape:
                    raise bad(f"{name}/{layer} is missing or not of shape {shape}")
                sums[name][layer] = t
        for name, store in (("fill_mean", fill_mean), ("fill_std", fill_std)):
            t = tensors.get(f"{name}/{layer}")
            if t is not None:
                if tuple(t.shape) != (k,):
                    raise bad(f"{name}/{layer} has shape {tuple(t.shape)}, expected ({k},)")
                store[layer] = t
    for key in ("class_ids", "class_names"):
        if meta.get(key) is not None and len(meta[key]) != n:
            raise bad(f"{key} has {len(meta[key])} entries for {n} classes")
    return Importance(weights=weights, classes=list(classes), num_classes=n,
                      fingerprint=meta["model"], settings=meta["settings"],
                      class_ids=meta.get("class_ids"), class_names=meta.get("class_names"),
                      gram=gram, r=r, fill_mean=fill_mean, fill_std=fill_std, **sums)
