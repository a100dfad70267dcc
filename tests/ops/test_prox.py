"""The fused FISTA-step kernel (``chip_fast.kernels.prox``) against ``fista_step_reference``.

Set-up and helpers (interpreter, poisoned allocations) are in tests/kernel_helpers.py.
"""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1, which must precede the first import
# of triton and chip_fast.kernels.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast.kernels import prox as kprox
from chip_fast.kernels.prox import fista_step_triton
from chip_fast.ops.prox import fista_step_reference

skip_unless_runnable(kprox._fista_kernel)


FISTA_SHAPES = [(1, 1), (37, 5), (5, 1500), (33, 65), (2, 1)]


def _fista_inputs(k, c, dtype, seed):
    g = gen(seed)
    a = torch.randn(k, k + 3, generator=g, dtype=torch.float64)
    gram = (a @ a.t() / (k + 3)).to(dtype)
    w, v, r = (torch.randn(k, c, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    lam = torch.rand(c, generator=g, dtype=torch.float64).to(dtype)
    eta = 1.0 / float(torch.linalg.eigvalsh(gram.double()).max())
    return [x.to(DEV) for x in (gram, w, v, r)], eta, lam.to(DEV)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", FISTA_SHAPES, ids=lambda s: f"K{s[0]}C{s[1]}")
def test_fista_step_matches_reference(shape, dtype, nonneg):
    k, c = shape
    (gram, w, v, r), eta, lam = _fista_inputs(k, c, dtype, k * 100 + c)
    with poisoned_allocations():
        w_next, v_next = fista_step_triton(gram, w, v, r, eta, lam, nonneg, 0.37)
    ref_w, ref_v = fista_step_reference(gram, w, v, r, eta, lam, nonneg, 0.37)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert_close(w_next, ref_w, rtol=rtol, atol_scale=ref_w.abs().max().item() + 1e-30)
    assert_close(v_next, ref_v, rtol=rtol, atol_scale=ref_v.abs().max().item() + 1e-30)
    # The soft-threshold's zeros are exactly where the reference has them (away from ties).
    if dtype == torch.float64:
        assert torch.equal(w_next == 0, ref_w == 0)
    if nonneg:
        assert (w_next >= 0).all()


def test_fista_step_nan_propagates():
    (gram, w, v, r), eta, lam = _fista_inputs(6, 4, torch.float64, 1)
    v[2, 1] = float("nan")
    w_next, v_next = fista_step_triton(gram, w, v, r, eta, lam, False, 0.5)
    ref_w, ref_v = fista_step_reference(gram, w, v, r, eta, lam, False, 0.5)
    assert torch.equal(torch.isnan(w_next), torch.isnan(ref_w)) and torch.isnan(w_next).any()
    assert torch.allclose(w_next, ref_w, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.allclose(v_next, ref_v, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_fista_step_errors_and_empty():
    (gram, w, v, r), eta, lam = _fista_inputs(4, 3, torch.float64, 2)
    with pytest.raises(TypeError, match="float32 and float64"):
        fista_step_triton(gram.half(), w, v, r, eta, lam, False, 0.0)
    with pytest.raises(ValueError, match="r must"):
        fista_step_triton(gram, w, v, r[:, :2], eta, lam, False, 0.0)
    with pytest.raises(TypeError, match="one dtype"):
        fista_step_triton(gram, w.float(), v, r, eta, lam, False, 0.0)
    z = torch.zeros(4, 0, dtype=torch.float64, device=DEV)
    w_next, v_next = fista_step_triton(gram, z, z, z, eta, lam[:0], False, 0.0)
    assert w_next.shape == (4, 0) and v_next.shape == (4, 0)


def test_a_kernel_path_solve_reads_its_scalars_from_one_device_table(monkeypatch):
    """``solve_lasso`` on the kernel path copies every step's [eta, momentum] to the device
    once (``ops.prox.fista_scalars``) and hands each step its row, not a host pair (a
    pageable copy that waits for the device, once per step); the same weights as the
    PyTorch path, whose steps take the floats."""
    from chip_fast.solve.lasso import fista_momenta, solve_lasso
    g = gen(4)
    a = torch.randn(60, 9, generator=g, dtype=torch.float64)
    gram, r = (a.t() @ a / 60).to(DEV), torch.randn(3, 9, generator=g, dtype=torch.float64).to(DEV)
    seen = []
    real = kprox.fista_step_triton

    def spy(*args):
        seen.append(args[-1])
        return real(*args)
    monkeypatch.setattr(kprox, "fista_step_triton", spy)
    monkeypatch.setenv("CHIP_FAST_BACKEND", "triton")
    got = solve_lasso(gram, r, alpha=0.1, max_iter=40, check_every=10)
    monkeypatch.setenv("CHIP_FAST_BACKEND", "torch")
    want = solve_lasso(gram, r, alpha=0.1, max_iter=40, check_every=10)
    assert len(seen) == got.iterations and all(s is not None for s in seen)
    storage = {s.untyped_storage().data_ptr() for s in seen}
    assert len(storage) == 1                       # one table for the whole solve
    momenta = fista_momenta(got.iterations)
    assert [float(s[1]) for s in seen] == momenta
    assert_close(got.weights, want.weights, rtol=1e-12)
