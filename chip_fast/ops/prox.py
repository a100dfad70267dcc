"""Stage 1 proximal step: one FISTA iteration of the Lasso for all classes at once.

This module owns the op ``fista_step``: its PyTorch reference (gradient step, soft-threshold,
optional clamp at 0, momentum) and the dispatch to the fused Triton kernel
(``chip_fast.kernels.prox``). It may not decide the step size, the momentum schedule or when to
stop (``chip_fast.solve.lasso`` does) nor import triton or the kernels at module level: the PyTorch
path must run where Triton is absent.
"""
from __future__ import annotations

import torch


def soft_threshold(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """S_t(v) = sign(v) * max(|v| - t, 0)."""
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0)


def fista_step_reference(gram: torch.Tensor, w: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                         eta: float, lam: torch.Tensor, nonneg: bool, momentum: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One FISTA iteration for all classes.

    gram: (K, K); w: (K, C) current iterate; v: (K, C) momentum point; r: (K, C); lam: (C,).
    Returns (w_next, v_next) with
      w_next = prox(v - eta * (gram @ v - r)),  prox = soft-threshold at eta*lam (then clamp >= 0)
      v_next = w_next + momentum * (w_next - w).
    """
    u = v - eta * (gram @ v - r)
    w_next = soft_threshold(u, eta * lam[None, :])
    if nonneg:
        w_next = torch.clamp(w_next, min=0)
    v_next = w_next + momentum * (w_next - w)
    return w_next, v_next


def fista_scalars(eta: float, momenta: list[float], gram: torch.Tensor) -> torch.Tensor | None:
    """On the kernel path, a (steps, 4) table of [eta, momentum of step i, pad, pad] in gram's
    dtype on its device, copied once per solve, so no step copies its scalars from the host
    (a pageable copy that waits for the device); the padding keeps each row 16-byte aligned,
    one kernel specialisation for every step. None on the PyTorch path (it takes the floats)."""
    from .backend import use_triton
    if not use_triton(gram):
        return None
    table = torch.zeros(len(momenta), 4, dtype=gram.dtype)
    table[:, 0] = eta
    table[:, 1] = torch.tensor(momenta, dtype=torch.float64)
    if gram.is_cuda:
        table = table.pin_memory()
    return table.to(gram.device, non_blocking=True)


def fista_step(gram: torch.Tensor, w: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
               eta: float, lam: torch.Tensor, nonneg: bool, momentum: float,
               scalars: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``fista_step_reference``, on CUDA by the fused Triton kernel when it is available;
    ``scalars``: this step's row of ``fista_scalars`` (the same eta and momentum)."""
    from .backend import use_triton
    if use_triton(gram):
        from ..kernels.prox import fista_step_triton
        return fista_step_triton(gram, w, v, r, eta, lam, nonneg, momentum, scalars)
    return fista_step_reference(gram, w, v, r, eta, lam, nonneg, momentum)
