"""Shared pieces of the imagenette study (search, table, baseline, variants, stability):
the model, the two halves of val-dev, distillation with a cache, the peers, held-out R^2 and
top-channel stability. Only chip_fast's public API is used, so the scripts keep working while
the distillation engine changes underneath.

Halves: val-dev's photos in sorted file-name order; even indices are the *selection* half
(every choice is made there), odd indices the *confirmation* half (only looked at to confirm).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import chip_fast
from chip_fast.evaluation import LocDataset, chip_method, load_val_dir
from chip_fast.evaluation.peers import peer
from chip_fast.models import load_model, preprocess_of

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
DATA = ROOT / ".." / "shared" / "data"
TRAIN = DATA / "imagenette" / "train"
VAL = DATA / "imagenette" / "val-dev"
DEEP, MID = "features.18", "features.14.conv.0"


def mobilenet_v2() -> torch.nn.Module:
    return load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")


class Half(torch.utils.data.Dataset):
    """Every other photo of a LocDataset: ``parity`` 0 (selection) or 1 (confirmation)."""

    def __init__(self, base: LocDataset, parity: int) -> None:
        self.base = base
        self.index = list(range(parity, len(base), 2))
        self.labels = [base.labels[i] for i in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        return self.base[self.index[i]]


def halves(base: LocDataset | None = None) -> dict[str, Half]:
    """The selection and confirmation halves of ``base`` (val-dev read with MobileNetV2's
    preprocessing unless given)."""
    base = load_val_dir(VAL) if base is None else base
    return {"selection": Half(base, 0), "confirmation": Half(base, 1)}


ARCHS = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TAGS = {"mobilenet_v2": "mnv2", "efficientnet_lite0": "lite0", "efficientnet_lite1": "lite1",
        "efficientnet_lite2": "lite2"}


def arch_setup(arch: str) -> tuple[torch.nn.Module, LocDataset, Any]:
    """The model with real weights, val-dev read as the model was trained to see it, and the
    preprocessing its distillation reads imagenette/train with (None: the library's default
    for MobileNetV2). EfficientNet-Lite0/1/2: their pip packages' weights and their own [-1, 1]
    preprocessing at their own size (224, 240, 260 px; val-dev resized to it, boxes with it)."""
    if arch == "mobilenet_v2":
        return mobilenet_v2(), load_val_dir(VAL), None
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    model = load_model(arch)
    prep = preprocess_of(model)
    return model, load_val_dir(VAL, preprocess=replace(prep, mode="resize")), prep


def photo_subset(per_class: int, where: Path) -> Path:
    """A train/ folder of the first ``per_class`` photos (sorted) of every class, as symlinks."""
    root = where / f"train_p{per_class}"
    for wnid in sorted(p.name for p in TRAIN.iterdir() if p.is_dir()):
        d = root / wnid
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted((TRAIN / wnid).iterdir())[:per_class]:
            link = d / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)
    return root


def distill_cached(model: torch.nn.Module, path: Path, data: Path = TRAIN,
                   layers: list[str] | None = None, preprocess: Any = None,
                   **settings: Any) -> chip_fast.Importance:
    """``distill_all_classes`` on ``data`` (imagenette/train by default) read with
    ``preprocess`` (None: the model's own), or the file ``path`` if an earlier run wrote it;
    the wall time is recorded beside it (``path.json``)."""
    path = Path(path)
    if path.is_file():
        return chip_fast.load_importance(path)
    t0 = time.perf_counter()
    source = chip_fast.ImageFolderSource(data, preprocess=preprocess)
    imp = chip_fast.distill_all_classes(model, source, layers, progress=False, **settings)
    imp.save(path)
    info = {"seconds": time.perf_counter() - t0, "data": str(data), "layers": imp.layers,
            "settings": {k: v for k, v in settings.items()},
            "device": f"CPU, {torch.get_num_threads()} threads"}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return imp


def library_defaults() -> dict[str, Any]:
    """The settings of DistillSettings that change the maps, passed explicitly, so a table is
    the library's defaults even where a keyword default of distill_all_classes would lag."""
    defaults = chip_fast.DistillSettings()
    return {k: getattr(defaults, k) for k in ("samples_per_class", "p_keep", "fill", "response",
                                              "alpha", "nonneg", "augment", "baseline", "masks",
                                              "estimator", "control")}


BOX_COLUMNS = (("GT-known@0.2", "gt_known@0.2"), ("MaxBoxAcc", "max_box_acc"),
               ("top-1 loc err", "top1_loc_err"))


def chip_maps(imp: chip_fast.Importance, layers: list[str], suffix: str = "",
              refined: str = "Refined CHIP", redistill: Any = None) -> dict[str, Any]:
    """Evaluation methods for ``imp``: Refined CHIP and each layer's CHIP map, named with
    ``suffix``; ``redistill``: the sanity check's (``chip_method``)."""
    methods = {f"{refined}{suffix}": chip_method(imp, None, redistill=redistill)}
    for layer in layers:
        methods[f"CHIP @ {layer}{suffix}"] = chip_method(imp, [layer], redistill=redistill)
    return methods


def median_r2(imp: chip_fast.Importance) -> dict[str, float]:
    """Per layer, the median over classes of the held-out R^2 (Importance.fit_quality)."""
    import statistics
    return {l: statistics.median(float(v) for v in r) for l, r in imp.fit_quality().items()}


def table(results: dict[str, dict], columns=BOX_COLUMNS) -> str:
    """Markdown, one row per method; each column holds every half in ``results`` (evaluate's
    results by half name), e.g. 'sel. / con.'."""
    halves_ = list(results)
    head = " | ".join(f"{c} ({' / '.join(h[:3] + '.' for h in halves_)})" for c, _ in columns)
    lines = [f"| method | {head} |", "|---" * (len(columns) + 1) + "|"]
    for name in results[halves_[0]]["methods"]:
        cells = []
        for _, key in columns:
            vals = [results[h]["methods"][name].get(key) for h in halves_]
            fmt = "{:.1f}" if key == "ms_per_image" else "{:.3f}"
            cells.append(" / ".join("-" if v is None else fmt.format(v) for v in vals))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def peers_at(layers: list[str], deep: str = DEEP) -> dict[str, Any]:
    """CAM at ``deep`` (the layer feeding the pooling: MobileNetV2's features.18) and Grad-CAM,
    Grad-CAM++, Layer-CAM at ``layers``."""
    methods = {f"cam@{deep}": peer("cam", deep)}
    for name in ("gradcam", "gradcam++", "layercam"):
        for layer in layers:
            methods[f"{name}@{layer}"] = peer(name, layer)
    return methods


def top_channels(imp: chip_fast.Importance, layer: str, k: int = 10) -> dict[int, set[int]]:
    """Each distilled class's ``k`` channels of largest positive importance."""
    w = imp.weights[layer]
    return {c: set(w[c].clamp(min=0).topk(k).indices[w[c].clamp(min=0).topk(k).values > 0]
                   .tolist()) for c in imp.classes}


def top_channel_overlap(a: chip_fast.Importance, b: chip_fast.Importance, layer: str,
                        k: int = 10) -> dict[int, float]:
    """Per class, |top-k(a) & top-k(b)| / k: how stable a class's top channels are."""
    ta, tb = top_channels(a, layer, k), top_channels(b, layer, k)
    return {c: len(ta[c] & tb[c]) / k for c in ta}
