"""Shared set-up of the kernel tests (tests/ops/: test_perturb.py, test_perturb_means.py,
test_response_sums.py, test_class_maps.py, test_prox.py, test_backend.py): each tests Triton
kernels against their PyTorch reference. Imported as ``tests.kernel_helpers``.

Without CUDA the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set
here, so a kernel test file imports this module before anything imports triton or
chip_fast.kernels); with CUDA they are compiled and run on the GPU. Sizes are kept small (the
interpreter executes every program in Python) but awkward: not multiples of the block sizes,
K = 1, one class, thousands of classes, empty batches.

Every kernel call runs with ``torch.empty``/``torch.empty_like`` poisoned (NaN for floats, 0x77
bytes for integers), so an output element the kernel forgets to write shows up as a failure.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="Triton is not installed; the kernels need it")

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")

if not CUDA and not os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1: the kernels cannot run on CPU",
                allow_module_level=True)


def _interpreted(f) -> bool:
    return type(f).__name__ == "InterpretedFunction"


def _loaded_kernel_functions() -> list:
    """Every @triton.jit function of the chip_fast.kernels modules imported so far (a helper
    such as the Philox rounds, decorated before TRITON_INTERPRET=1, breaks the kernels that
    call it even when they themselves were decorated after)."""
    import sys
    return [f for name, mod in list(sys.modules.items())
            if name.startswith("chip_fast.kernels") and mod is not None
            for f in vars(mod).values()
            if type(f).__name__ in ("JITFunction", "InterpretedFunction")]


def skip_unless_runnable(kernel) -> None:
    """Skip the calling test module when ``kernel`` (a @triton.jit function) cannot run here:
    without CUDA it must have been decorated after TRITON_INTERPRET=1 was set."""
    if not CUDA and not all(_interpreted(f) for f in [kernel, *_loaded_kernel_functions()]):
        pytest.skip("chip_fast.kernels was imported before TRITON_INTERPRET=1 was set (run this "
                    "file in its own process or export TRITON_INTERPRET=1)",
                    allow_module_level=True)


@contextlib.contextmanager
def poisoned_allocations():
    """Make the wrappers' torch.empty / torch.empty_like return garbage-filled buffers."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        elif t.dtype == torch.bool:
            t.view(torch.uint8).fill_(0x77)
        else:
            t.fill_(0x77)
        return t

    torch.empty = lambda *a, **k: poison(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(real_empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close(actual, expected, rtol, atol_scale=None):
    """|a - e| <= rtol * (|e| + scale), scale = max|e| by default (an absolute floor relative to
    the data, for entries that are small after cancellation)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    assert not torch.isnan(a).any(), "kernel output contains NaN"
    scale = e.abs().max().item() if atol_scale is None else atol_scale
    err = (a - e).abs() - rtol * (e.abs() + scale)
    assert err.max().item() <= 0, f"max abs error {(a - e).abs().max().item():.3g}"
