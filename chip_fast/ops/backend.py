"""Which implementation runs a hot path: the Triton kernels on CUDA, plain PyTorch elsewhere.

This module owns the one predicate, ``use_triton``, that every op module (``perturb``,
``response_sums``, ``class_maps``, ``prox``) asks before importing its kernel. It may not import
triton at module level (only ``triton_available`` tries, on first use with a CUDA tensor) nor
know any op.
"""
from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` lives on CUDA, Triton imports, and CHIP_FAST_BACKEND is not 'torch'.

    CHIP_FAST_BACKEND=torch forces the PyTorch reference path everywhere (for comparisons);
    CHIP_FAST_BACKEND=triton forces the kernels on every device, so that the whole engine's
    kernel path runs on a CPU under Triton's interpreter (TRITON_INTERPRET=1) in the tests.
    """
    backend = os.environ.get("CHIP_FAST_BACKEND", "auto")
    if backend == "torch":
        return False
    if backend == "triton":
        return triton_available()
    return t.is_cuda and triton_available()
