"""The importance file format: safetensors tensors, JSON metadata, and integrity digests.

A file holds the tensors ``weights/<layer>`` (num_classes, K) float32, ``gram/<layer>`` (K, K)
and ``r/<layer>`` (len(classes), K) float64, the per-fold sums ``sum_zy``/``sum_y``/``sum_yy``
``/<layer>`` float64 (of the response less its control variate where ``settings["controls"]``
names one, ``chip_fast.solve.control``), the fill statistics ``fill_mean``/``fill_std/<layer>`` (K,) float32, the
channel atlas when it was kept (``atlas/value|key|where|patch/<layer>``, ``chip_fast.atlas.collect``)
and one metadata entry, ``chip_fast``: JSON with the format name and version, the model's
fingerprint, layers, channel counts, classes, class ids and names, every distillation setting,
and (version 2 on) ``integrity``: ``{"algorithm": "sha256", "metadata": <sha256 of the canonical
JSON of every other field>, "tensors": {name: <sha256 of dtype, shape and bytes>}}``. One entry,
not two: safetensors writes its metadata map in no fixed order, and a same-seed run must give
the same bytes.

The digests are an integrity check against damage (a disk, a partial copy) and careless edits (a
hand-edited class name, a script that rewrote a tensor), not a signature: whoever can edit the
file can recompute them. A file whose digests do not match is refused, naming what differs.
Version-1 files (written before the digests) are read with an :class:`UnverifiedFileWarning`.
safetensors never unpickles, so loading a stranger's file cannot run code.

This module owns the format: what is written, how it is checked on load, and the error a bad
file raises. The in-memory object is ``chip_fast.importance.core.Importance``, built from the
fields this module reads; the atomic write is ``chip_fast.util.atomic``.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .core import Importance

from ..util.atomic import atomic_write

FORMAT = "chip_fast.importance"
VERSION = 2
READABLE_VERSIONS = (1, 2)
META_KEY = "chip_fast"
INTEGRITY = "integrity"      # the field of the metadata that holds the digests
ATLAS_PREFIX = "atlas/"      # the channel atlas's tensors (chip_fast.atlas.collect), when kept
# Tensor groups besides the weights, with the dtype they are stored in (None: as they are).
_STATISTICS = (("gram", None), ("r", None), ("sum_zy", torch.float64), ("sum_y", torch.float64),
               ("sum_yy", torch.float64), ("fill_mean", torch.float32),
               ("fill_std", torch.float32), ("agreement", torch.float64),
               ("weight_se", torch.float32))


class ImportanceFileError(ValueError):
    """A file that is not a valid importance file, or does not fit the model it is used with."""


class UnverifiedFileWarning(UserWarning):
    """An importance file without integrity digests (format version 1) was loaded unchecked."""


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: a changed byte, a reinterpreted dtype or a
    reshaped header all change it."""
    h = hashlib.sha256(f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metadata_digest(meta: dict[str, Any]) -> str:
    """sha256 of the metadata fields (without the digests) as canonical JSON: any change of a
    value (a class name, a setting) changes it; re-spacing the JSON does not."""
    fields = {k: v for k, v in meta.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def metadata_of(imp: Importance) -> dict[str, Any]:
    """The ``chip_fast`` metadata entry of ``imp``, as a dict."""
    return {
        "format": FORMAT, "version": VERSION,
        "layers": imp.layers,
        "channels": {layer: imp.channels(layer) for layer in imp.layers},
        "num_classes": imp.num_classes, "classes": imp.classes,
        "class_ids": imp.class_ids, "class_names": imp.class_names,
        "model": imp.fingerprint, "settings": imp.settings,
    }


def tensors_of(imp: Importance) -> dict[str, torch.Tensor]:
    """Every tensor of ``imp`` by its name in the file, on the CPU, contiguous."""
    out = {f"weights/{k}": v.detach().to("cpu", torch.float32).contiguous()
           for k, v in imp.weights.items()}
    for name, dtype in _STATISTICS:
        out.update({f"{name}/{k}": v.detach().to("cpu", dtype or v.dtype).contiguous()
                    for k, v in getattr(imp, name).items()})
    if imp.atlas is not None:
        out.update(imp.atlas.to_tensors(ATLAS_PREFIX))
    return out


def write_importance(imp: Importance, path: str | Path) -> Path:
    """Write ``imp`` with its digests, atomically; returns the path."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = tensors_of(imp)
    # Through JSON and back first, so the digest is of what a reader will parse (int keys
    # become strings, tuples lists) rather than of the Python objects.
    meta = json.loads(json.dumps(metadata_of(imp)))
    meta[INTEGRITY] = {"algorithm": "sha256", "metadata": metadata_digest(meta),
                       "tensors": {name: tensor_digest(t) for name, t in tensors.items()}}
    entries = {META_KEY: json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=entries))
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata entries and every tensor of a safetensors file."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportanceFileError(f"{path} is not a safetensors file: {e}") from e


def digest_mismatches(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """What in a file does not match the digests in its metadata, in words; [] when all
    match."""
    try:
        record = meta[INTEGRITY]
        stored, algorithm, meta_digest = record["tensors"], record["algorithm"], record["metadata"]
        stored = dict(stored)
    except (KeyError, TypeError, ValueError) as e:
        return [f"its digest record is malformed ({type(e).__name__}: {e})"]
    if algorithm != "sha256":
        return [f"its digests use {algorithm!r}, this chip_fast checks sha256 only"]
    why = []
    if metadata_digest(meta) != meta_digest:
        why.append("the metadata (the 'chip_fast' JSON entry: classes, class names, layers, "
                   "settings, model fingerprint) does not match its digest")
    changed = sorted(n for n in stored.keys() & tensors.keys()
                     if tensor_digest(tensors[n]) != stored[n])
    if changed:
        why.append(f"tensor(s) {', '.join(changed)} do not match their digests")
    missing = sorted(stored.keys() - tensors.keys())
    if missing:
        why.append(f"tensor(s) {', '.join(missing)} are missing")
    extra = sorted(tensors.keys() - stored.keys())
    if extra:
        why.append(f"tensor(s) {', '.join(extra)} were added")
    return why


def _layer_tensors(meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                   bad: Callable[[str], ImportanceFileError]) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of every layer by group (weights, gram, r, sums, fill statistics), each
    checked against the shapes the metadata implies."""
    out: dict[str, dict[str, torch.Tensor]] = {"weights": {}}
    out.update({name: {} for name, _ in _STATISTICS})
    folds = meta["settings"].get("folds") if isinstance(meta["settings"], dict) else None
    n, c = meta["num_classes"], len(meta["classes"])
    for layer in meta["layers"]:
        w = tensors.get(f"weights/{layer}")
        k = meta["channels"].get(layer)
        if w is None:
            raise bad(f"tensor weights/{layer} is missing")
        if tuple(w.shape) != (n, k):
            raise bad(f"weights/{layer} has shape {tuple(w.shape)}, metadata says ({n}, {k})")
        if not torch.isfinite(w).all():
            raise bad(f"weights/{layer} contains NaN or Inf")
        out["weights"][layer] = w
        if f"gram/{layer}" in tensors:
            g, r = tensors[f"gram/{layer}"], tensors.get(f"r/{layer}")
            if r is None or tuple(g.shape) != (k, k) or tuple(r.shape) != (c, k):
                raise bad(f"the statistics of layer {layer} are missing or misshapen")
            out["gram"][layer], out["r"][layer] = g, r
        if f"sum_zy/{layer}" in tensors:
            if not isinstance(folds, int) or folds < 1:
                raise bad(f"it holds per-fold sums but settings.folds is {folds!r}")
            for name, shape in (("sum_zy", (c, folds, k)), ("sum_y", (c, folds)),
                                ("sum_yy", (c, folds))):
                t = tensors.get(f"{name}/{layer}")
                if t is None or tuple(t.shape) != shape:
                    raise bad(f"{name}/{layer} is missing or not of shape {shape}")
                out[name][layer] = t
        for name, shape in (("fill_mean", (k,)), ("fill_std", (k,)), ("agreement", (c,)),
                            ("weight_se", (c, k))):
            t = tensors.get(f"{name}/{layer}")
            if t is not None:
                if tuple(t.shape) != shape:
                    raise bad(f"{name}/{layer} has shape {tuple(t.shape)}, expected {shape}")
                out[name][layer] = t
    return out


def _parse_metadata(entries: dict[str, str], bad: Callable[[str], ImportanceFileError]
                    ) -> dict[str, Any]:
    raw = entries.get(META_KEY)
    if raw is None:
        raise bad(f"it has no {META_KEY!r} metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise bad(f"its metadata is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                  f"expected {FORMAT!r}")
    if meta.get("version") not in READABLE_VERSIONS:
        raise bad(f"format version {meta.get('version')} is not supported (this chip_fast "
                  f"reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    return meta


def _check_metadata(meta: dict[str, Any], bad: Callable[[str], ImportanceFileError]) -> None:
    """The fields the tensors are read by are present and consistent."""
    for key in ("layers", "channels", "num_classes", "classes", "model", "settings"):
        if key not in meta:
            raise bad(f"metadata lacks {key!r}")
    n = meta["num_classes"]
    if any(not isinstance(c, int) or not 0 <= c < n for c in meta["classes"]):
        raise bad(f"classes must be indices below num_classes={n}")
    for key in ("class_ids", "class_names"):
        if meta.get(key) is not None and len(meta[key]) != n:
            raise bad(f"{key} has {len(meta[key])} entries for {n} classes")
    st = meta["settings"] if isinstance(meta["settings"], dict) else {}
    reached = st.get("samples_reached")
    if reached is not None:
        cap = st.get("samples_per_class")
        if (not isinstance(reached, list) or len(reached) != len(meta["classes"])
                or not isinstance(cap, int)
                or any(not isinstance(m, int) or not 2 <= m <= cap for m in reached)):
            raise bad(f"settings.samples_reached must hold one sample count in [2, "
                      f"samples_per_class={cap!r}] per distilled class")


def read_fields(path: str | Path) -> dict[str, Any]:
    """The fields of the Importance an importance file holds, checking the file completely: its
    digests first (a damaged or edited file is refused naming what differs), then its
    structure. Nothing is unpickled."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an importance file: give the file "
                                "that distillation wrote (e.g. chip-fast distill --out m.chip)")
    if not path.is_file():
        raise FileNotFoundError(f"importance file {path} does not exist")
    entries, tensors = _read(path)

    def bad(why: str) -> ImportanceFileError:
        return ImportanceFileError(f"{path} is not a valid chip_fast importance file: {why}")

    meta = _parse_metadata(entries, bad)
    if INTEGRITY in meta:
        # Before the structural checks: a flipped byte or an edited field should be reported as
        # damage or an edit, not as the NaN or inconsistency it happens to produce.
        why = digest_mismatches(meta, tensors)
        if why:
            raise ImportanceFileError(
                f"{path} failed its integrity check: {'; '.join(why)}. The file was damaged or "
                "edited after it was written; restore a good copy or distil again")
    _check_metadata(meta, bad)
    parts = _layer_tensors(meta, tensors, bad)
    atlas = _atlas(meta, tensors, bad)
    if INTEGRITY not in meta:
        if meta["version"] >= 2:
            raise bad(f"its metadata has no {INTEGRITY!r} digests (files of format version "
                      f"{meta['version']} always carry them): it was rewritten by another tool")
        warnings.warn(f"{path} was written before importance files carried integrity digests "
                      f"(format version {meta['version']}): it is loaded without checking it "
                      "for damage or edits; save it again to add them",
                      UnverifiedFileWarning, stacklevel=3)
    return dict(weights=parts.pop("weights"), classes=list(meta["classes"]),
                num_classes=meta["num_classes"], fingerprint=meta["model"],
                settings=meta["settings"], class_ids=meta.get("class_ids"),
                class_names=meta.get("class_names"), atlas=atlas, **parts)


def _atlas(meta: dict[str, Any], tensors: dict[str, torch.Tensor],
           bad: Callable[[str], ImportanceFileError]):
    """The channel atlas stored in the file, checked against its layers; None if it has none."""
    if not any(name.startswith(ATLAS_PREFIX) for name in tensors):
        return None
    from ..atlas.collect import ChannelAtlas
    try:
        atlas = ChannelAtlas.from_tensors(tensors, ATLAS_PREFIX)
    except ValueError as e:
        raise bad(f"its channel atlas is malformed: {e}") from None
    for layer, a in atlas.layers.items():
        if meta["channels"].get(layer) != a.channels:
            raise bad(f"its channel atlas has {a.channels} channels at {layer!r}, the weights "
                      f"{meta['channels'].get(layer)}")
    return atlas
