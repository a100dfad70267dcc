"""How many rows (images) a CPU forward takes at once, so that no tensor it makes is served by
fresh pages of memory.

glibc's malloc hands every allocation above its mmap threshold (at most 32 MiB, raised to the
largest block freed below that) fresh pages from the kernel, and the first write to each page
faults. A batch of 64 photos through MobileNetV2 makes 300 MB tensors at 112 x 112, and a CPU
forward then spends more time faulting pages than convolving: the prefix runs at less than
half the speed it has in chunks whose largest tensor stays below the threshold (measured:
docs/design.md, "Measured choices"). Other allocators lose nothing by the chunking. On CUDA the
caching allocator keeps its blocks, so nothing is chunked there.

Owns the chunk size and the chunked call; the prefix itself is ``chip_fast.models.split``'s.
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch
import torch.fx as fx
from torch import nn

from .tracing import trace

# Largest tensor a chunk may make: below glibc's largest mmap threshold (32 MiB) with room for
# the allocator's own headers and a neighbour's buffers.
CHUNK_BYTES = 24 << 20


class _PeakBytes(fx.Interpreter):
    """Runs a graph and records the bytes of the largest tensor any node makes."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.peak = 0

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.peak = max(self.peak, t.numel() * t.element_size())
        return out


def rows_per_chunk(peak_bytes: int, budget: int | None = None) -> int:
    """Rows whose largest tensor stays within ``budget`` bytes (default ``CHUNK_BYTES``), at
    least one."""
    return max(1, (CHUNK_BYTES if budget is None else budget) // max(1, peak_bytes))


def chunk_rows(module: fx.GraphModule, x: torch.Tensor) -> int | None:
    """Rows per chunk for ``module`` on inputs shaped like ``x``; None where an output is not a
    batch-first tensor (one row in, size 1 along its first axis out), which chunks could not be
    concatenated back into."""
    peak, outputs = _probe(module, x)
    if not all(isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == 1 for t in outputs):
        return None
    return rows_per_chunk(peak)


# model -> {(row shape, dtype): rows or None}: tracing and probing a model costs a forward pass
_MODEL_ROWS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_rows(model: nn.Module, x: torch.Tensor) -> int | None:
    """Rows per chunk for the whole ``model`` (its forward, or a forward and backward, whose
    gradients are the activations' size) on inputs shaped like ``x``; None on a GPU, for a
    model in training mode (probing it would move its batch norms' statistics, and chunks would
    change what they normalise over), where the model cannot be traced, or where an output is
    not batch-first. Remembered per model and input shape."""
    if x.device.type != "cpu" or model.training:
        return None
    key = (tuple(x.shape[1:]), x.dtype)
    known = _MODEL_ROWS.setdefault(model, {})
    if key not in known:
        try:
            module = fx.GraphModule(model, trace(model))
        except Exception:  # noqa: BLE001 - fx raises many types for untraceable Python
            module = None
        known[key] = None if module is None else chunk_rows(module, x)
    return known[key]


def _probe(module: fx.GraphModule, x: torch.Tensor) -> tuple[int, tuple]:
    """(bytes of the largest tensor ``module`` makes for one row of ``x``, its outputs)."""
    interp = _PeakBytes(module)
    with torch.inference_mode():   # a copy: a model may write into its input in place
        out = interp.run(x[:1].clone())
    return interp.peak, tuple(out) if isinstance(out, (tuple, list)) else (out,)


def run_in_chunks(fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], x: torch.Tensor,
                  rows: int) -> tuple[torch.Tensor, ...]:
    """``fn(x)`` computed ``rows`` rows at a time, every output concatenated along its first
    axis. ``fn`` must return batch-first tensors (a prefix's activations are)."""
    if rows >= len(x):
        return tuple(fn(x))
    parts = [tuple(fn(x[i:i + rows])) for i in range(0, len(x), rows)]
    return tuple(torch.cat(outs) for outs in zip(*parts))
