"""Which implementation runs a hot path: the Triton kernels on CUDA, plain PyTorch elsewhere."""
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

    CHIP_FAST_BACKEND=torch forces the PyTorch reference path everywhere (for comparisons).
    """
    if os.environ.get("CHIP_FAST_BACKEND", "auto") == "torch":
        return False
    return t.is_cuda and triton_available()
