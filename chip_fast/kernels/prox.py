"""One FISTA iteration for all classes: a tiled (K, K) @ (K, C) product with a fused epilogue.

Reference: ``chip_fast.ops.prox.fista_step_reference``; ``chip_fast.ops.prox.fista_step`` dispatches
here on CUDA. Per output tile (BLOCK_M channels x BLOCK_N classes) the program accumulates
(gram @ v) over K, then, without writing the product back, applies the gradient step
u = v - eta (gram v - r), the soft-threshold at eta * lam_c, the optional clamp at 0 and the
momentum v_next = w_next + momentum (w_next - w), and stores w_next and v_next. One launch per
iteration instead of ~8 element-wise PyTorch kernels.

Precision:
- float32: ``tl.dot(..., input_precision="ieee")``, i.e. true fp32 products (no TF32), as the
  PyTorch reference with its default ``allow_tf32 = False`` for matmul.
- float64: ``tl.dot`` has no fp64 operands (Triton documents int8/fp8/fp16/bf16/fp32), so the
  product is accumulated in fp64 by an explicit loop of rank-1 updates over K (CUDA-core FMAs:
  exact fp64 arithmetic, but not the fp64 tensor cores cuBLAS DGEMM can use on H100, so for
  large K the product itself may be slower than the reference's matmul; what this path saves is
  the ~7 element-wise launches and their memory round trips). The solver runs in float64, so
  this is its path.
- eta and momentum travel as a tensor of the working dtype: a Python float kernel argument
  would be rounded to float32, which is not acceptable for the float64 solve. A solve passes
  ``scalars``, its row of a table copied to the device once (``chip_fast.ops.prox``); without
  it each call copies its own pair from the host, which waits for the device every step.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fista_kernel(g_ptr, w_ptr, v_ptr, r_ptr, lam_ptr, scal_ptr, w_out_ptr, v_out_ptr, K, C,
                  NONNEG: tl.constexpr, USE_DOT: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < K
    n_ok = rn < C
    dtype = g_ptr.dtype.element_ty

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=dtype)
    if USE_DOT:
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            # Masked-out entries load as 0, so partial tiles contribute nothing to the sum.
            a = tl.load(g_ptr + rm[:, None] * K + rk[None, :],
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(v_ptr + rk[:, None] * C + rn[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc += tl.dot(a, b, input_precision="ieee")
    else:
        # fp64: rank-1 updates, one column of gram and one row of v per step. Plain FMAs on the
        # register tile, no 3-D temporaries or cross-thread reductions; the column loads of
        # gram hit the same cache lines for 8 consecutive steps.
        for kk in range(0, K):
            a = tl.load(g_ptr + rm * K + kk, mask=m_ok, other=0.0)
            b = tl.load(v_ptr + kk * C + rn, mask=n_ok, other=0.0)
            acc += a[:, None] * b[None, :]

    # Epilogue, in the reference's operation order: u = v - eta * ((G v) - r).
    eta = tl.load(scal_ptr)
    momentum = tl.load(scal_ptr + 1)
    tile = rm[:, None] * C + rn[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    v = tl.load(v_ptr + tile, mask=ok, other=0.0)
    r = tl.load(r_ptr + tile, mask=ok, other=0.0)
    w = tl.load(w_ptr + tile, mask=ok, other=0.0)
    thresh = eta * tl.load(lam_ptr + rn, mask=n_ok, other=0.0)
    u = v - eta * (acc - r)
    # sign(u) * max(|u| - t, 0), written with where so that a NaN in u stays NaN (u * 0) as in
    # torch.sign, instead of being swallowed by a max.
    mag = tl.abs(u) - thresh[None, :]
    mag = tl.where(mag > 0, mag, 0.0)
    w_next = tl.where(u > 0, mag, tl.where(u < 0, -mag, u * 0.0))
    if NONNEG:
        w_next = tl.where(w_next < 0, 0.0, w_next)
    v_next = w_next + momentum * (w_next - w)
    tl.store(w_out_ptr + tile, w_next, mask=ok)
    tl.store(v_out_ptr + tile, v_next, mask=ok)


def fista_step_triton(gram: torch.Tensor, w: torch.Tensor, v: torch.Tensor, r: torch.Tensor,
                      eta: float, lam: torch.Tensor, nonneg: bool, momentum: float,
                      scalars: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``fista_step_reference``: (w_next, v_next), both (K, C) in gram's dtype (fp32 or fp64).
    ``scalars``: [eta, momentum, ...] already on gram's device in its dtype; the kernel reads
    those, and ``eta`` and ``momentum`` are not used."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square (K, K), got {tuple(gram.shape)}")
    dtype = gram.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fista_step_triton supports float32 and float64, got {dtype}")
    k = gram.shape[0]
    if w.dim() != 2 or w.shape[0] != k:
        raise ValueError(f"w must be ({k}, C), got {tuple(w.shape)}")
    c = w.shape[1]
    for name, x in (("w", w), ("v", v), ("r", r), ("lam", lam)):
        expected = (c,) if name == "lam" else (k, c)
        if tuple(x.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
        if x.device != gram.device:
            raise ValueError(f"{name} is on {x.device}, gram on {gram.device}")
        if name != "lam" and x.dtype != dtype:
            raise TypeError(f"{name} is {x.dtype}, gram is {dtype}: use one dtype")
    gram, w, v, r = (x.contiguous() for x in (gram, w, v, r))
    lam = lam.to(dtype).contiguous()
    w_next = torch.empty_like(w)
    v_next = torch.empty_like(w)
    if k == 0 or c == 0:
        return w_next, v_next
    if scalars is None:
        scal = torch.tensor([float(eta), float(momentum)], dtype=dtype, device=gram.device)
    elif scalars.dtype != dtype or scalars.device != gram.device or scalars.numel() < 2:
        raise ValueError(f"scalars must hold [eta, momentum] as {dtype} on {gram.device}")
    else:
        scal = scalars
    use_dot = dtype == torch.float32
    # tl.dot needs tiles of at least 16. fp64: a 64 x 64 tile is 32 accumulators per thread
    # (4 warps), enough FMAs per loaded element; BLOCK_K is unused there.
    bm, bn, bk = (32, 32, 32) if use_dot else (64, 64, 1)
    grid = (triton.cdiv(k, bm), triton.cdiv(c, bn))
    _fista_kernel[grid](gram, w, v, r, lam, scal, w_next, v_next, k, c,
                        NONNEG=bool(nonneg), USE_DOT=use_dot,
                        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return w_next, v_next
