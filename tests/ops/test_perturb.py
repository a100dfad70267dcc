"""The fused perturbation kernel (``chip_fast.kernels.perturb``) against ``perturb_reference``.

``perturb_kernel`` is the kernel path of ``chip_fast.ops.perturb`` whatever the device; set-up and
helpers (interpreter, poisoned allocations) are in tests/kernel_helpers.py.
"""
from __future__ import annotations

import pytest
import torch

# Imported first: without CUDA it sets TRITON_INTERPRET=1, which must precede the first import
# of triton and chip_fast.kernels.
from tests.kernel_helpers import DEV, assert_close, gen, poisoned_allocations, skip_unless_runnable

from chip_fast import rng
from chip_fast.kernels import perturb as kperturb
from chip_fast.ops.perturb import perturb_kernel, perturb_reference

skip_unless_runnable(kperturb._perturb_kernel)


PERTURB_SHAPES = [
    # (V, K, spatial, T)
    (3, 13, (5, 7), 9),       # E = 35: not a multiple of 4, several channel blocks
    (2, 1, (3, 3), 4),        # K = 1
    (2, 6, (), 5),            # no spatial dims (E = 1)
    (1, 5, (17,), 3),         # 1-D spatial
    (2, 3, (33, 40), 2),      # large maps: one channel per program, noise skipped for kept ones
]


def kept_channels(out: torch.Tensor, acts: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    """(T, K) bool: channels whose values are the activations' own (the kernel returns no masks;
    with acts far from the fill values, a channel is kept exactly when it equals its view)."""
    a = acts[view].double()
    return (out.double() == a).reshape(*a.shape[:2], -1).all(2)


@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
@pytest.mark.parametrize("shape", PERTURB_SHAPES, ids=lambda s: f"V{s[0]}K{s[1]}E{s[2]}T{s[3]}")
def test_perturb_matches_reference(fill, shape):
    v_count, k, spatial, t = shape
    g = gen(PERTURB_SHAPES.index(shape) * 3 + ("noise", "zero", "mean").index(fill))
    acts = torch.randn(v_count, k, *spatial, generator=g).to(DEV)
    view = torch.randint(0, v_count, (t,), generator=g).to(DEV)
    classes = torch.randint(0, 5000, (t,), generator=g).to(DEV)
    samples = torch.randint(0, 2**32, (t,), generator=g).to(DEV)
    mu = torch.randn(k, generator=g).to(DEV)
    sigma = (torch.rand(k, generator=g) + 0.5).to(DEV)
    kw = dict(seed=(1 << 63) + 987654321, p_keep=0.5, fill=fill, mu=mu, sigma=sigma)
    with poisoned_allocations():
        out = perturb_kernel(acts, view, classes, samples, **kw)
    ref_out, ref_masks = perturb_reference(acts, view, classes, samples, **kw)
    assert_close(out, ref_out, rtol=1e-5)
    assert torch.equal(kept_channels(out, acts, view), ref_masks)
    if fill != "noise":
        assert torch.equal(out, ref_out)


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**32, 2**64 - 1])
@pytest.mark.parametrize("p_keep", [1e-9, 0.1, 0.5, 0.9, 1 - 1e-12])
def test_perturb_masks_bit_identical(seed, p_keep):
    # Key words and thresholds >= 2**31 and == 1 (argument specialisation) all go through.
    k, t = 11, 6
    acts = torch.randn(2, k, 2, generator=gen(seed % 1000)).to(DEV) + 10.0   # never a fill value
    view = torch.tensor([0, 1, 1, 0, 0, 1], device=DEV)
    samples = torch.tensor([0, 1, 2**31, 2**32 - 1, 7, 123456], device=DEV)
    classes = torch.tensor([0, 1, 2**28 + 3, 999, 5, 2**40], device=DEV)
    mu = torch.zeros(k, device=DEV)
    sigma = torch.ones(k, device=DEV)
    with poisoned_allocations():
        out = perturb_kernel(acts, view, classes, samples, seed=seed, p_keep=p_keep,
                             fill="noise", mu=mu, sigma=sigma)
    assert torch.equal(kept_channels(out, acts, view), rng.keep_masks(seed, samples, k, p_keep))
    ref_out, _ = perturb_reference(acts, view, classes, samples, seed=seed, p_keep=p_keep,
                                   fill="noise", mu=mu, sigma=sigma)
    assert_close(out, ref_out, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_perturb_dtypes(dtype):
    g = gen(7)
    acts = torch.randn(2, 6, 3, 5, generator=g).to(DEV, dtype)
    view = torch.tensor([1, 0, 1], device=DEV)
    classes = torch.tensor([3, 4, 5], device=DEV)
    samples = torch.tensor([10, 11, 12], device=DEV)
    mu = torch.randn(6, generator=g).to(DEV)
    sigma = torch.rand(6, generator=g).to(DEV)
    kw = dict(seed=42, p_keep=0.5, fill="noise", mu=mu, sigma=sigma)
    with poisoned_allocations():
        out = perturb_kernel(acts, view, classes, samples, **kw)
    ref_out, _ = perturb_reference(acts, view, classes, samples, **kw)
    assert out.dtype == dtype
    # Float32 noise differs by ~1e-6 before the cast, i.e. at most one ulp of the output dtype.
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-5}[dtype]
    assert_close(out, ref_out, rtol=tol)


@pytest.mark.parametrize("acts_layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("out_layout", ["nchw", "channels_last"])
def test_perturb_layouts_and_out_buffer(acts_layout, out_layout):
    """Written once in the layout and dtype the tail consumes: bf16 channels-last from float32
    NCHW acts (the CUDA engine), into a given buffer (a CUDA graph's input)."""
    g = gen(11)
    k, h, w, t = 70, 3, 5, 4          # K > 64: several channel blocks in channels-last
    acts = torch.randn(3, k, h, w, generator=g).to(DEV)
    if acts_layout == "channels_last":
        acts = acts.contiguous(memory_format=torch.channels_last)
    view = torch.tensor([2, 0, 1, 2], device=DEV)
    classes = torch.tensor([1, 2, 3, 4], device=DEV)
    samples = torch.tensor([5, 6, 7, 8], device=DEV)
    mu, sigma = torch.randn(k, generator=g).to(DEV), torch.rand(k, generator=g).to(DEV)
    kw = dict(seed=3, p_keep=0.5, fill="noise", mu=mu, sigma=sigma)
    fmt = torch.channels_last if out_layout == "channels_last" else torch.contiguous_format
    buf = torch.full((t, k, h, w), float("nan"), dtype=torch.bfloat16, device=DEV).contiguous(
        memory_format=fmt)
    got = perturb_kernel(acts, view, classes, samples, out=buf, **kw)
    assert got is buf and got.is_contiguous(memory_format=fmt)
    ref, _ = perturb_reference(acts, view, classes, samples, **kw)
    assert_close(got, ref.to(torch.bfloat16), rtol=8e-3)
    fresh = perturb_kernel(acts, view, classes, samples, channels_last=True, **kw)
    assert fresh.is_contiguous(memory_format=torch.channels_last)
    assert_close(fresh, ref, rtol=1e-5)


def test_perturb_reference_keeps_channels_last():
    acts = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    out, _ = perturb_reference(acts, torch.tensor([1, 0, 1]), torch.tensor([0, 1, 2]),
                               torch.tensor([0, 1, 2]), seed=0, p_keep=0.5, fill="noise",
                               mu=torch.zeros(4), sigma=torch.ones(4))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_perturb_empty_and_errors():
    acts = torch.randn(2, 4, 3, device=DEV)
    mu, sigma = torch.zeros(4, device=DEV), torch.ones(4, device=DEV)
    empty = torch.zeros(0, dtype=torch.long, device=DEV)
    out = perturb_kernel(acts, empty, empty, empty, seed=1, p_keep=0.5, fill="zero",
                         mu=mu, sigma=sigma)
    assert out.shape == (0, 4, 3)
    idx = torch.tensor([0, 2], device=DEV)
    with pytest.raises(IndexError, match="view"):
        perturb_kernel(acts, idx, idx, idx, seed=1, p_keep=0.5, fill="zero", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="fill"):
        perturb_kernel(acts, idx, idx, idx, seed=1, p_keep=0.5, fill="blur", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="mu"):
        perturb_kernel(acts, idx[:1], idx[:1], idx[:1], seed=1, p_keep=0.5, fill="mean",
                       mu=mu[:3], sigma=sigma)
    with pytest.raises(ValueError, match="p_keep"):
        perturb_kernel(acts, idx[:1], idx[:1], idx[:1], seed=1, p_keep=1.0, fill="zero",
                       mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="out must be"):
        perturb_kernel(acts, idx[:1], idx[:1], idx[:1], seed=1, p_keep=0.5, fill="zero",
                       mu=mu, sigma=sigma, out=torch.empty(2, 4, 3, device=DEV))
