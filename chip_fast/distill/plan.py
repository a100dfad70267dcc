"""The plan of a distillation: every choice made once, before any perturbation.

Owns the settings (``DistillSettings``: all choices that change the result, recorded in the
file), the batch sizes (from the device, or from a memory budget), the classes, the cut of the
work into units (class group x sample block), which view each sample uses, and the identity
that ties a checkpoint to its job. It runs no model: the channel counts and the number of model
outputs it needs come from the unit runner's probe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..data.sources import ViewPlan, views_per_image
from ..models.layers import probe_outputs
from ..ops.perturb import FILLS

RESPONSES = ("logit", "softmax", "log_softmax")
TAIL_PATHS = ("auto", "elementwise")
BASELINES = ("none", "view")


@dataclass(frozen=True)
class DistillSettings:
    """Every choice that changes the result; all are written into the importance file."""
    samples_per_class: int = 2048
    seed: int = 0
    p_keep: float = 0.5
    # "zero": a disabled channel is absent. Its importance is then what the class loses when the
    # channel's content is removed, i.e. presence evidence; with "noise"/"mean" (METHOD.md) a
    # channel that is *below average* on the class's photos and lowers the score when present
    # also gets positive weight, and paints the background. Measured on imagenette (300 photos
    # per class): the 14x14 map 0.43 -> 0.53 and Refined CHIP 0.64 -> 0.69 MaxBoxAcc
    # (docs/evaluation.md, "The paper's setting").
    fill: str = "zero"
    response: str = "logit"
    alpha: float = 0.1
    nonneg: bool = False
    augment: bool | int = False
    # Perturbed samples per tail forward; None: 64 on a CPU, where a batch that stays in cache
    # makes the tails 1.7x faster than 256 (benchmarks/results/batch_size_cpu), else 256.
    batch_size: int | None = None
    classes_per_unit: int = 8
    samples_per_unit: int = 512
    fill_stats_views: int = 1024   # views that estimate each channel's mean and std
    tol: float = 1e-6
    max_iter: int = 5000
    # Sample i belongs to fold i % folds; the sums are kept per fold, so a fit can be checked
    # (and its penalty chosen) on samples it did not see: Importance.refit, held-out R^2.
    folds: int = 4
    # Tail forwards in bfloat16 autocast (channels-last input) where the device has fast bf16:
    # "auto" means bfloat16 on CUDA and float32 elsewhere. Responses are always float32.
    tail_dtype: str = "auto"
    # "auto": a layer whose tail is affine in its spatial mean (global pooling + Linear) takes
    # the affine path, which draws the fill noise's spatial mean directly (METHOD.md) and never
    # materialises a perturbed activation; "elementwise": every layer perturbs every element.
    # The file records the path each layer took (settings["paths"]).
    tail_path: str = "auto"
    # Patches kept per channel for the channel atlas (chip_fast.atlas.collect), cut from the prefix
    # passes the distillation makes anyway; 0: no atlas. In the identity, so a checkpoint made
    # without the atlas (which lacks the views already done) is not resumed into a job with one.
    atlas: int = 0
    # "view": each response y is taken minus p_keep times the unperturbed response y0 of the
    # same view for the same class, a control variate. The masks are independent of the view,
    # so the fitted weights estimate the same thing; but the photo-to-photo spread of y, which
    # the masks cannot explain, leaves the fit: where the tail is linear in the layer,
    # E[y | view] = p_keep * y0 + const exactly (any fill). One more tail forward per view.
    # Measured with 300 photos per class (docs/evaluation.md): held-out R^2 at MobileNetV2's
    # features.18 -0.33 -> 0.40, top-10 channels found again by another seed 0.05 -> 0.60.
    # "none": METHOD.md's raw response.
    baseline: str = "view"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)
        need(isinstance(self.samples_per_class, int) and self.samples_per_class >= 2,
             f"samples_per_class must be an int >= 2, got {self.samples_per_class!r}")
        need(0 < self.p_keep < 1, f"p_keep must be in (0, 1), got {self.p_keep}")
        need(isinstance(self.atlas, int) and not isinstance(self.atlas, bool) and self.atlas >= 0,
             f"atlas must be an int >= 0 (patches per channel), got {self.atlas!r}")
        need(self.baseline in BASELINES,
             f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        need(self.fill in FILLS, f"fill must be one of {FILLS}, got {self.fill!r}")
        need(self.response in RESPONSES, f"response must be one of {RESPONSES}, got {self.response!r}")
        need(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        need((self.batch_size is None or self.batch_size >= 1) and self.classes_per_unit >= 1
             and self.samples_per_unit >= 1,
             "batch_size, classes_per_unit and samples_per_unit must be >= 1")
        need(isinstance(self.folds, int) and 1 <= self.folds <= self.samples_per_class,
             f"folds must be an int in [1, samples_per_class], got {self.folds!r}")
        views_per_image(self.augment)
        need(self.tail_dtype in ("auto", "float32", "bfloat16"),
             f"tail_dtype must be auto, float32 or bfloat16, got {self.tail_dtype!r}")
        need(self.tail_path in TAIL_PATHS,
             f"tail_path must be one of {TAIL_PATHS}, got {self.tail_path!r}")


# -- batch sizes: chosen once, here ----------------------------------------------------------------
def resolve_settings(settings: DistillSettings, device: torch.device) -> DistillSettings:
    """``settings`` with "auto"/None made concrete for ``device`` (the file records them); a
    memory budget chooses the batch sizes instead through :func:`plan_memory`."""
    cuda = device.type == "cuda"
    tail_dtype = settings.tail_dtype if settings.tail_dtype != "auto" else (
        "bfloat16" if cuda else "float32")
    batch_size = settings.batch_size if settings.batch_size is not None else (256 if cuda else 64)
    return dataclasses.replace(settings, tail_dtype=tail_dtype, batch_size=batch_size)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'4GiB', '512MiB', '8G' (decimal), '1e9' -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {text!r}: write e.g. 4GiB, 512MiB or 8GB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"memory size {text!r} is not positive")
    return int(value)


@dataclass(frozen=True)
class MemoryPlan:
    """Batch size and samples per unit chosen from a memory budget, and the sizes behind them."""
    budget: int
    batch_size: int
    samples_per_unit: int
    per_sample_bytes: int     # one perturbed sample in a tail forward
    per_view_bytes: int       # one cached view (the layers' activations)
    model_bytes: int


BATCH_CAP = 1024          # beyond this, GPUs gain little and the float results still change
UNIT_CAP = 512            # the DistillSettings default: checkpoint granularity stays fine


def _floor_pow2(x: float) -> int:
    return 1 << int(math.floor(math.log2(x))) if x >= 1 else 0


def _activation_sizes(model: nn.Module, image_shape: Sequence[int], layers: Sequence[str]
                      ) -> tuple[dict[str, int], dict[str, int], int]:
    """Per-sample bytes of each layer's output, of the largest leaf output after each layer, and
    of the largest leaf output anywhere, from one forward pass of a blank image."""
    wanted = set(layers)
    records = [(name, out[0].numel() * out.element_size())
               for name, m, out in probe_outputs(model, image_shape)
               if name in wanted or not list(m.children())]
    layer_bytes, tail_max = {}, {}
    for layer in layers:
        i = max(j for j, (n, _) in enumerate(records) if n == layer)
        layer_bytes[layer] = records[i][1]
        tail_max[layer] = max([b for _, b in records[i + 1:]] or [records[i][1]])
    return layer_bytes, tail_max, max(b for _, b in records)


def plan_memory(model: nn.Module, image_shape: Sequence[int], layers: Sequence[str],
                budget: int | str, *, classes_per_unit: int = 8, samples_per_class: int = 2048
                ) -> MemoryPlan:
    """Choose ``batch_size`` and ``samples_per_unit`` so a unit fits in ``budget`` bytes.

    With, per sample and in the model's dtype, A_l the output of layer l, T_l the largest module
    output after l, M the largest anywhere, P the parameters and buffers:

        usable          = 0.75 * budget - P            (25% for the allocator and the runtime)
        per_sample      = max over l of (3 * A_l + 3 * T_l)   perturbed copy + noise + values,
                                                             and a tail op's input and output
        batch_size      = largest power of 2 with batch_size * max(per_sample, 2 M) <= usable / 2
        per_view        = sum over l of A_l           (the unit's cached prefix outputs)
        samples_per_unit = largest power of 2 with classes_per_unit * samples_per_unit * per_view
                           <= usable / 2              (worst case: every sample its own view)

    capped at 1024 and 512. The result depends only on the architecture, the image size, the
    layers and the budget, never on the machine, so a budget names the same settings (and so the
    same floats: batch composition changes them slightly) everywhere; the settings and the
    budget are written into the importance file.
    """
    budget = parse_bytes(budget)
    layer_bytes, tail_max, largest = _activation_sizes(model, image_shape, layers)
    model_bytes = sum(t.numel() * t.element_size()
                      for t in list(model.parameters()) + list(model.buffers()))
    usable = 0.75 * budget - model_bytes
    per_sample = max(3 * layer_bytes[l] + 3 * tail_max[l] for l in layers)
    per_view = sum(layer_bytes.values())
    batch = min(BATCH_CAP, _floor_pow2(usable / 2 / max(per_sample, 2 * largest)))
    unit_cap = min(UNIT_CAP, 1 << math.ceil(math.log2(max(samples_per_class, 1))))
    unit = min(unit_cap, _floor_pow2(usable / 2 / (classes_per_unit * per_view)))
    if batch < 1 or unit < 1:
        need = (model_bytes + 2 * max(per_sample, 2 * largest, classes_per_unit * per_view)) / 0.75
        raise ValueError(f"a memory budget of {budget / 2**20:.0f} MiB is too small for this "
                         f"model and layers: it needs at least {need / 2**20:.0f} MiB")
    return MemoryPlan(budget, batch, unit, per_sample, per_view, model_bytes)


# -- the units -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    group: int
    block: int


def select_classes(available: Sequence[int], wanted: Iterable[int] | None) -> list[int]:
    """The classes to distil: all of ``available`` or the requested ones, sorted; a requested
    class without images is refused."""
    if wanted is None:
        classes = list(available)
    else:
        classes = sorted({int(c) for c in wanted})
        have = set(available)
        missing = [c for c in classes if c not in have]
        if missing:
            raise ValueError(f"classes {missing[:20]} have no images in the data "
                             f"({len(available)} classes have images)")
    if not classes:
        raise ValueError("no class to distill")
    return classes


class DistillPlan:
    """Classes, units, views and sizes of one job: fixed before the first unit runs."""

    def __init__(self, settings: DistillSettings, layers: Sequence[str], classes: Sequence[int],
                 images_per_class: dict[int, int], num_classes: int, channels: dict[str, int],
                 paths: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.layers = list(layers)
        self.classes = list(classes)
        self.num_classes = num_classes
        self.channels = dict(channels)
        # "affine" or "elementwise" per layer (chip_fast.distill.tails): part of what a file means.
        self.paths = dict(paths) if paths is not None else {l: "elementwise" for l in layers}
        big = [c for c in self.classes if c >= num_classes]
        if big:
            raise ValueError(f"classes {big[:10]} are outside the model's {num_classes} outputs")
        n = settings.samples_per_class
        per_image = views_per_image(settings.augment)
        self.views = ViewPlan(n, {c: images_per_class[c] * per_image for c in self.classes})
        cpu = settings.classes_per_unit
        self.groups = [self.classes[i:i + cpu] for i in range(0, len(self.classes), cpu)]
        self.blocks = math.ceil(n / settings.samples_per_unit)
        self.units = [Unit(g, b) for g in range(len(self.groups)) for b in range(self.blocks)]
        self.slot = {c: i for i, c in enumerate(self.classes)}

    def group_rows(self, g: int) -> torch.Tensor:
        """Rows of class group ``g`` in the per-class sums."""
        return torch.tensor([self.slot[c] for c in self.groups[g]])

    def fill_views(self) -> list[tuple[int, int]]:
        """The (class, view) pairs that estimate the fill statistics: up to
        ``fill_stats_views``, round-robin over the classes so every class counts."""
        order: list[tuple[int, int]] = []
        depth = 0
        while len(order) < self.settings.fill_stats_views:
            added = [(c, depth) for c in self.classes if depth < self.views.views[c]]
            if not added:
                break
            order += added
            depth += 1
        return order[:self.settings.fill_stats_views]

    def unit_sample_range(self, unit: Unit) -> range:
        """Per-class sample indices of a unit."""
        st = self.settings
        s0 = unit.block * st.samples_per_unit
        return range(s0, min(s0 + st.samples_per_unit, st.samples_per_class))

    def unit_samples(self, unit: Unit) -> int:
        """Perturbed networks evaluated by a unit (all layers)."""
        return len(self.groups[unit.group]) * len(self.unit_sample_range(unit)) * len(self.layers)

    def pending(self, done_blocks: Sequence[int], groups: Iterable[int] | None = None) -> list[Unit]:
        """Units not yet done, of ``groups`` (default all), in the order they must run."""
        groups = range(len(self.groups)) if groups is None else groups
        return [Unit(g, b) for g in groups for b in range(done_blocks[g], self.blocks)]

    def identity(self, model_sha256: str) -> str:
        """A hash of everything that must match for a checkpoint to be resumed."""
        key: dict[str, Any] = {
            "settings": dataclasses.asdict(self.settings), "layers": self.layers,
            "classes": self.classes, "model": model_sha256, "paths": self.paths,
            "views": {str(c): v for c, v in self.views.views.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
