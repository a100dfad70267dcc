"""A ``chip-fast explain`` run: image files in, a folder out.

For every image and class it writes ``<stem>_class<c>.png`` (the map on the photo at the photo's
own resolution and aspect ratio, the part the model did not see dimmed, the class name and a
colour bar drawn on it) and ``<stem>_class<c>.npy`` (the raw map, float32 in [0, 1], on the
model's input), and at the end ``index.html`` showing them all with the images skipped and why.

Owns the files of a run, their names, the checks made before any image is read, and what is
said per image; maps are ``chip_fast.maps.explain``'s, drawing ``chip_fast.report.overlay``'s and the page
``chip_fast.report.page``'s.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data.sources import IMAGE_SUFFIXES, ImageError, open_photo
from .explain import (REFINE_POWER, TOP_DISTILLED, Layers, as_layers, check_class_range,
                      check_refine_power, explain_available)
from ..importance.core import Importance
from ..report.overlay import input_region, overlay_on_photo
from ..data.preprocess import Preprocess
from ..util.progress import Progress
from ..report.page import ExplainedPhoto, class_label, write_explain_index


@dataclass
class ExplainRun:
    """What a run wrote and what it skipped (each with the reason)."""
    explained: list[ExplainedPhoto] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    index: Path | None = None


def image_paths(items: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files named by ``items`` (one or several files, or folders searched
    recursively)."""
    if isinstance(items, (str, Path)):
        items = [items]
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*")
                            if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no image or folder {p}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
                                f"{', '.join(map(str, items))}")
    return paths


def check_request(importance: Importance, out: Path, classes: list[int] | str | None,
                  layers: Layers, *, refine_power: float = REFINE_POWER) -> None:
    """Everything that can be refused before a model runs or an image is read. ``layers``: one
    layer name or several (None: the importance's)."""
    check_refine_power(refine_power)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; explain writes a folder of overlays "
                         "and maps: name a folder")
    if isinstance(classes, list):
        check_class_range(classes, importance.num_classes)
    importance.require(layers=as_layers(layers, importance),
                       classes=classes if isinstance(classes, list) else (),
                       hint=f"; ask for those, or --classes {TOP_DISTILLED}")


def _unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, numbered where two images share it (a/x.jpg, b/x.jpg): nothing is
    overwritten within a run."""
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def explain_files(model: nn.Module, importance: Importance, paths: Sequence[Path], out: Path,
                  prep: Preprocess, *, classes: list[int] | str | None = None,
                  layers: Layers = None, positive: bool = True,
                  refine_power: float = REFINE_POWER, on_error: str = "skip",
                  max_side: int = 2048, log: Callable[[str], None] | None = None) -> ExplainRun:
    """Explain every image of ``paths`` for ``classes`` (None: its top-1; ``"top-distilled"``:
    its best distilled class; or these classes, each) into ``out``; see the module doc.
    An image that cannot be decoded is skipped (``on_error="skip"``) or stops the run."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error={on_error!r}: give 'skip' or 'raise'")
    check_request(importance, out, classes, layers, refine_power=refine_power)
    importance.check_model(model)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    run, used = ExplainRun(), set()
    progress = Progress(len(paths), "images", write=say)
    for path in paths:
        try:
            photo = open_photo(path)
        except ImageError as e:
            if on_error == "raise":
                raise
            run.skipped.append((path, str(e)))
            progress.step(f"skipped {path}: {e}")
            continue
        x = prep(photo)[None].to(device)
        wanted = classes if not isinstance(classes, list) else torch.tensor(classes)
        batch = x if not isinstance(classes, list) else x.expand(len(classes), -1, -1, -1)
        ex = explain_available(model, importance, batch, wanted, layers=layers,
                               positive=positive, refine_power=refine_power,
                               check_model=False)
        stem = _unique_stem(path, used)
        probs = ex.logits.float().softmax(1).cpu()
        done = []
        for k, row in enumerate(ex.rows):
            c = int(ex.classes[row])
            item = _write_outputs(out, stem, photo, ex.maps[k], c, probs[row], importance, prep,
                                  path, max_side)
            run.explained.append(item)
            done.append(f"{class_label(importance.class_names, c)} -> {out / item.overlay}")
        for row, why in ex.skipped.items():
            reason = f"{why} (the file holds {len(importance.classes)} of " \
                     f"{importance.num_classes} classes; --classes {TOP_DISTILLED} explains " \
                     "the best distilled class)"
            run.skipped.append((path, reason))
            done.append(f"skipped: {reason}")
        progress.step(f"{path}: {'; '.join(done)}")
    return run


def _write_outputs(out: Path, stem: str, photo, heat: torch.Tensor, c: int, probs: torch.Tensor,
                   importance: Importance, prep: Preprocess, path: Path,
                   max_side: int) -> ExplainedPhoto:
    """The overlay PNG and the raw .npy of one (image, class)."""
    name = f"{stem}_class{c}"
    heat = heat.detach().float().cpu().numpy()
    np.save(out / f"{name}.npy", heat.astype(np.float32))
    label = class_label(importance.class_names, c)   # the probability is in the index
    overlay_on_photo(photo, heat, prep, label, max_side=max_side).save(out / f"{name}.png")
    p, idx = probs.topk(min(5, len(probs)))
    return ExplainedPhoto(photo=path, cls=c, overlay=f"{name}.png", raw=f"{name}.npy",
                          region=input_region(prep, photo.size), size=photo.size,
                          top=[(int(j), float(q)) for q, j in zip(p, idx)])


def write_index(run: ExplainRun, out: Path, importance: Importance, prep: Preprocess,
                layers: Layers, positive: bool, model_name: str) -> Path:
    """``out/index.html`` of the run."""
    used = as_layers(layers, importance)
    method = ("Refined CHIP" if len(used) > 1 else "CHIP") + ("" if positive else " (signed)")
    geometry = ("resized to the input" if prep.mode == "resize" else
                f"short side resized to {prep.resize}, centre {prep.size}x{prep.size} crop: the "
                "dimmed part of a photo is outside that crop, the model did not see it and "
                "there is no map there")
    notes = (f"{model_name}; {method} of {', '.join(used)}, "
             f"{'positive importance only' if positive else 'importance of both signs'}; the "
             f"file holds {len(importance.classes)} of {importance.num_classes} classes. "
             f"Photos {geometry}. Raw maps (.npy): float32 {prep.size}x{prep.size} in [0, 1] on "
             "the model's input, the outlined region of the photo.")
    run.index = write_explain_index(out, run.explained, run.skipped, importance, notes, method)
    return run.index
