"""Host-side helpers of the launch wrappers: argument checks and conversions that every kernel
module needs. Plain PyTorch, no kernels; this package may not import chip_fast."""
from __future__ import annotations

import torch


def u32_as_i32(x: int) -> int:
    """The int32 with the bit pattern of the uint32 ``x`` (to pass it as an i32 kernel argument).

    A Python int >= 2**31 would otherwise become an int64 kernel argument, and the kernel's
    uint32 comparisons would silently turn signed/64-bit; the kernel bitcasts it back.
    """
    if not 0 <= x < 1 << 32:
        raise ValueError(f"not a uint32: {x}")
    return x - (1 << 32) if x >= 1 << 31 else x


def check_index(index: torch.Tensor, bound: int | None, name: str, device: torch.device
                ) -> torch.Tensor:
    """1-D integer index on ``device`` with values in [0, bound) (unchecked when ``bound`` is
    None), as contiguous int64.

    The kernels gather with these indices, so an out-of-range value would read out of bounds;
    checking costs one small device-to-host read.
    """
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(index.shape)}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {index.dtype}")
    if index.device != device:
        raise ValueError(f"{name} is on {index.device}, expected {device}")
    if bound is not None and index.numel():
        lo, hi = (int(x) for x in torch.aminmax(index))
        if lo < 0 or hi >= bound:
            raise IndexError(f"{name} has values in [{lo}, {hi}], outside [0, {bound})")
    if index.dtype == torch.int64 and index.is_contiguous():
        return index   # the engine's case: no dispatch at all, once per batch adds up
    return index.to(torch.int64).contiguous()
