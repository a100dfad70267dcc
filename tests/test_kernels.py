"""The Triton kernels against their PyTorch references.

Without CUDA the kernels run on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set
here before triton is imported); with CUDA they are compiled and run on the GPU. Sizes are kept
small (the interpreter executes every program in Python) but awkward: not multiples of the block
sizes, K = 1, one class, thousands of classes, empty batches.

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

from chip_fast import rng  # noqa: E402
from chip_fast.maps import class_maps_reference, upsample_normalize_reference  # noqa: E402
from chip_fast.perturb import perturb_reference  # noqa: E402
from chip_fast.solver import fista_step_reference  # noqa: E402
from chip_fast.stats import response_sums_reference  # noqa: E402
from chip_fast.kernels import perturb as kperturb  # noqa: E402
from chip_fast.kernels.perturb import perturb_triton  # noqa: E402
from chip_fast.kernels.prox import fista_step_triton  # noqa: E402
from chip_fast.kernels.reweight import layer_maps_triton, response_sums_triton  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")

if not CUDA and not os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1: the kernels cannot run on CPU",
                allow_module_level=True)
if not CUDA and not type(kperturb._perturb_kernel).__name__ == "InterpretedFunction":
    pytest.skip("chip_fast.kernels was imported before TRITON_INTERPRET=1 was set (run this "
                "file in its own process or export TRITON_INTERPRET=1)", allow_module_level=True)


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# perturb
# ------------------------------------------------------------------------------------------
PERTURB_SHAPES = [
    # (V, K, spatial, T)
    (3, 13, (5, 7), 9),       # E = 35: not a multiple of 4, several channel blocks
    (2, 1, (3, 3), 4),        # K = 1
    (2, 6, (), 5),            # no spatial dims (E = 1)
    (1, 5, (17,), 3),         # 1-D spatial
    (2, 3, (33, 40), 2),      # large maps: one channel per program, noise skipped for kept ones
]


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
        out, masks = perturb_triton(acts, view, classes, samples, **kw)
    ref_out, ref_masks = perturb_reference(acts, view, classes, samples, **kw)
    assert masks.dtype == torch.bool and masks.view(torch.uint8).max().item() <= 1
    assert torch.equal(masks, ref_masks)
    assert_close(out, ref_out, rtol=1e-5)
    if fill != "noise":
        assert torch.equal(out, ref_out)


@pytest.mark.parametrize("seed", [0, 1, 2**31, 2**32 - 1, 2**32, 2**64 - 1])
@pytest.mark.parametrize("p_keep", [1e-9, 0.1, 0.5, 0.9, 1 - 1e-12])
def test_perturb_masks_bit_identical(seed, p_keep):
    # Key words and thresholds >= 2**31 and == 1 (argument specialisation) all go through.
    k, t = 11, 6
    acts = torch.randn(2, k, 2, generator=gen(seed % 1000)).to(DEV)
    view = torch.tensor([0, 1, 1, 0, 0, 1], device=DEV)
    samples = torch.tensor([0, 1, 2**31, 2**32 - 1, 7, 123456], device=DEV)
    classes = torch.tensor([0, 1, 2**28 + 3, 999, 5, 2**40], device=DEV)
    mu = torch.zeros(k, device=DEV)
    sigma = torch.ones(k, device=DEV)
    with poisoned_allocations():
        out, masks = perturb_triton(acts, view, classes, samples, seed=seed, p_keep=p_keep,
                                    fill="noise", mu=mu, sigma=sigma)
    assert torch.equal(masks, rng.keep_masks(seed, samples, k, p_keep))
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
        out, masks = perturb_triton(acts, view, classes, samples, **kw)
    ref_out, ref_masks = perturb_reference(acts, view, classes, samples, **kw)
    assert out.dtype == dtype and torch.equal(masks, ref_masks)
    # Float32 noise differs by ~1e-6 before the cast, i.e. at most one ulp of the output dtype.
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-5}[dtype]
    assert_close(out, ref_out, rtol=tol)


def test_perturb_empty_and_errors():
    acts = torch.randn(2, 4, 3, device=DEV)
    mu, sigma = torch.zeros(4, device=DEV), torch.ones(4, device=DEV)
    empty = torch.zeros(0, dtype=torch.long, device=DEV)
    out, masks = perturb_triton(acts, empty, empty, empty, seed=1, p_keep=0.5, fill="zero",
                                mu=mu, sigma=sigma)
    assert out.shape == (0, 4, 3) and masks.shape == (0, 4)
    idx = torch.tensor([0, 2], device=DEV)
    with pytest.raises(IndexError, match="view"):
        perturb_triton(acts, idx, idx, idx, seed=1, p_keep=0.5, fill="zero", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="fill"):
        perturb_triton(acts, idx, idx, idx, seed=1, p_keep=0.5, fill="blur", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="mu"):
        perturb_triton(acts, idx[:1], idx[:1], idx[:1], seed=1, p_keep=0.5, fill="mean",
                       mu=mu[:3], sigma=sigma)
    with pytest.raises(ValueError, match="p_keep"):
        perturb_triton(acts, idx[:1], idx[:1], idx[:1], seed=1, p_keep=1.0, fill="zero",
                       mu=mu, sigma=sigma)


# ------------------------------------------------------------------------------------------
# response sums
# ------------------------------------------------------------------------------------------
RESPONSE_CASES = [
    # (T, K, n_rows, p_keep)
    (100, 13, 3, 0.5),
    (1, 1, 1, 0.5),          # one sample, K = 1
    (0, 5, 2, 0.5),          # no samples: zeros
    (600, 6, 1, 0.3),        # one row, long run: split over several programs
    (40, 37, 9, 0.9),        # rows without samples, K not a multiple of 4 or the block
    (30, 3, 1000, 0.5),      # a thousand class slots, most empty
]


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=lambda c: f"T{c[0]}K{c[1]}R{c[2]}")
def test_response_sums_matches_reference(case):
    t, k, n_rows, p_keep = case
    g = gen(t * 31 + k)
    samples = torch.randint(0, 2**32, (t,), generator=g).to(DEV)
    y = torch.randn(t, generator=g).to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    seed = 2**40 + 17
    with poisoned_allocations():
        szy, sy = response_sums_triton(seed, samples, p_keep, k, y, rows, n_rows)
    if t:
        masks = rng.keep_masks(seed, samples, k, p_keep)
    else:  # rng.keep_masks cannot reshape zero samples (reported); the masks are simply (0, K)
        masks = torch.zeros(0, k, dtype=torch.bool, device=DEV)
    ref_zy, ref_y = response_sums_reference(masks, y, rows, n_rows)
    assert szy.dtype == sy.dtype == torch.float64
    assert_close(szy, ref_zy, rtol=1e-12, atol_scale=1.0)
    assert_close(sy, ref_y, rtol=1e-12, atol_scale=1.0)


def test_response_sums_exact_and_deterministic():
    # Integer responses: every partial sum is exact in float64, so any order gives the same bits.
    g = gen(3)
    t, k, n_rows = 300, 10, 2
    samples = torch.randperm(10**6, generator=g)[:t].to(DEV)
    y = torch.randint(-50, 50, (t,), generator=g).float().to(DEV)
    rows = torch.randint(0, n_rows, (t,), generator=g).to(DEV)
    a = response_sums_triton(5, samples, 0.5, k, y, rows, n_rows)
    b = response_sums_triton(5, samples, 0.5, k, y, rows, n_rows)
    ref = response_sums_reference(rng.keep_masks(5, samples, k, 0.5), y, rows, n_rows)
    assert torch.equal(a[0], ref[0]) and torch.equal(a[1], ref[1])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_response_sums_errors():
    s = torch.arange(4, device=DEV)
    y = torch.ones(4, device=DEV)
    with pytest.raises(IndexError, match="rows"):
        response_sums_triton(0, s, 0.5, 3, y, torch.tensor([0, 1, 2, 3], device=DEV), 3)
    with pytest.raises(ValueError, match="must all be"):
        response_sums_triton(0, s[:3], 0.5, 3, y, s, 4)


# ------------------------------------------------------------------------------------------
# layer maps
# ------------------------------------------------------------------------------------------
MAP_CASES = [
    # (B, K, h, w, C, P, size)
    (2, 13, 5, 7, 3, 5, (17, 23)),     # upsample by non-integer factors
    (2, 1, 4, 3, 2, 3, (9, 8)),        # K = 1
    (1, 40, 6, 6, 1, 1, (6, 6)),       # one class, same size (identity resampling)
    (3, 20, 6, 5, 2000, 6, (13, 11)),  # thousands of classes
    (2, 9, 9, 11, 4, 3, (5, 4)),       # downsampling
    (1, 7, 2, 9, 2, 2, (3, 40)),       # very anisotropic
]


@pytest.mark.parametrize("case", MAP_CASES, ids=lambda c: f"K{c[1]}h{c[2]}w{c[3]}C{c[4]}P{c[5]}")
def test_layer_maps_matches_reference(case):
    b, k, h, w, c, p, size = case
    g = gen(b * 1000 + k * 10 + c)
    acts = torch.randn(b, k, h, w, generator=g).to(DEV)
    weights = torch.randn(c, k, generator=g).to(DEV)
    image_index = torch.randint(0, b, (p,), generator=g).to(DEV)
    class_index = torch.randint(0, c, (p,), generator=g).to(DEV)
    # Keep every map well conditioned: a positive weight on a positive channel so that its
    # min-max span is not tiny (normalisation amplifies rounding by max|map| / span).
    acts[:, 0] = acts[:, 0].abs() + 0.5
    weights[:, 0] = weights[:, 0].abs() + 1.0
    with poisoned_allocations():
        out = layer_maps_triton(acts, weights, image_index, class_index, size)
    ref = upsample_normalize_reference(
        class_maps_reference(acts, weights, image_index, class_index), size)
    assert out.shape == (p, *size) and out.dtype == torch.float32
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert_close(out, ref, rtol=1e-5, atol_scale=1.0)


def test_layer_maps_half_acts_cpu_weights_and_degenerate_maps():
    g = gen(11)
    acts = (torch.randn(2, 8, 4, 5, generator=g).abs() + 0.1).to(DEV, torch.float16)
    weights = torch.randn(3, 8, generator=g, dtype=torch.float64)
    weights[1] = -1.0  # class 1: every map is ReLU'd to 0 -> an all-zero normalised map
    image_index = torch.tensor([0, 1, 1, 0], device=DEV)
    class_index = torch.tensor([0, 1, 2, 2], device=DEV)
    with poisoned_allocations():
        out = layer_maps_triton(acts, weights, image_index, class_index, (7, 9))
    ref = upsample_normalize_reference(
        class_maps_reference(acts, weights.to(DEV), image_index, class_index), (7, 9))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_close(out, ref, rtol=1e-5, atol_scale=1.0)
    # A 1x1 map upsamples to an exactly constant map, which normalises to zeros. (The reference's
    # F.interpolate is off by an ulp at some pixels, which normalisation blows up to 1.)
    one = torch.full((1, 3, 1, 1), 0.7, device=DEV)
    out = layer_maps_triton(one, torch.ones(2, 3, device=DEV), torch.zeros(2, dtype=torch.long,
                            device=DEV), torch.tensor([0, 1], device=DEV), (5, 6))
    assert torch.equal(out, torch.zeros(2, 5, 6, device=DEV))


def test_layer_maps_empty_and_errors():
    acts = torch.randn(2, 4, 3, 3, device=DEV)
    weights = torch.randn(5, 4, device=DEV)
    empty = torch.zeros(0, dtype=torch.long, device=DEV)
    assert layer_maps_triton(acts, weights, empty, empty, (4, 4)).shape == (0, 4, 4)
    idx = torch.tensor([0, 1], device=DEV)
    with pytest.raises(ValueError, match="weights"):
        layer_maps_triton(acts, weights[:, :3], idx, idx, (4, 4))
    with pytest.raises(IndexError, match="image_index"):
        layer_maps_triton(acts, weights, idx + 1, idx, (4, 4))
    with pytest.raises(IndexError, match="class_index"):
        layer_maps_triton(acts, weights, idx, idx + 4, (4, 4))


# ------------------------------------------------------------------------------------------
# FISTA step
# ------------------------------------------------------------------------------------------
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
