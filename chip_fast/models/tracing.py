"""Tracing a model with torch.fx: plainly, and where that fails on a timm model, with timm's own
registry of modules and functions that fx must not trace into.

timm marks the parts of its models that plain fx cannot trace (data-dependent shapes, such as
VGG's ConvMlp pooling only inputs smaller than its kernel) with ``register_notrace_module`` /
``register_notrace_function``, for its own feature extraction. Plain tracing comes first because
it sees more (timm's BatchNormAct2d traced through shows its activation); the registry is the
second try. Owns how a model is traced; what the graph means is ``layers``' and ``split``'s."""
from __future__ import annotations

import sys
from typing import Iterable

import torch.fx as fx
from torch import nn


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Iterable[str], leaf_types: tuple = (),
                 functions: tuple = ()) -> None:
        super().__init__(autowrap_functions=functions)
        self.leaves, self.leaf_types = set(leaves), leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaves or (bool(self.leaf_types) and isinstance(m, self.leaf_types))
                or super().is_leaf_module(m, qualname))


def _timm_registry() -> tuple[tuple, tuple] | None:
    """timm's no-trace module types and functions, where timm is already imported (a timm
    model exists only then; importing it for other models would cost seconds)."""
    if "timm" not in sys.modules:
        return None
    try:
        from timm.layers._fx import get_notrace_functions, get_notrace_modules
    except ImportError:
        return None
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


def trace(model: nn.Module, leaves: Iterable[str] = ()) -> fx.Graph:
    """The fx graph of ``model``, with the modules named in ``leaves`` kept whole; plain fx
    first, then with timm's no-trace registry. Raises plain fx's error when both fail."""
    leaves = list(leaves)
    try:
        return _Tracer(leaves).trace(model)
    except Exception as plain:  # noqa: BLE001 - fx raises many types for untraceable Python
        registry = _timm_registry()
        if registry is None:
            raise
        try:
            return _Tracer(leaves, *registry).trace(model)
        except Exception:  # noqa: BLE001
            raise plain from None
