"""Batch size and samples per unit from a memory budget (``max_memory``): the sizes of a model's
activations from one forward pass of a blank image, and the arithmetic that fits a unit in the
budget."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..models.layers import probe_outputs

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
                budget: int | str, *, classes_per_unit: int = 8, samples_per_class: int = 4096
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
