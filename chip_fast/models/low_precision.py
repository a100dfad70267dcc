"""A copy of a module whose convolutions and linear layers hold bfloat16 weights.

Autocast casts a float32 weight on every call; a job runs the same prefix and tails thousands
of times, so the distillation casts them once, in a copy (the model's own modules keep their
dtype: maps and evaluation read float32 activations). Convolutions are also made channels-last,
the layout the engine feeds them on a CPU. The copy runs under autocast of the same dtype, which
still casts what holds no weight (an input, a batch norm's output).

Owns the cast and the autocast context; where each copy runs is ``split``'s (the prefix) and
``distill.tails``' (the tails).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``module`` with every Conv and Linear weight (and bias) in ``dtype``,
    convolutions channels-last."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.to(dtype=dtype)
            if isinstance(m, nn.Conv2d):
                m.to(memory_format=torch.channels_last)
    return module


def autocast_to(device: torch.device, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device`` where ``dtype`` is bfloat16, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
