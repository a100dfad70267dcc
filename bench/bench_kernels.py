"""Benchmarks (pytest-benchmark) of the Triton kernels against their PyTorch references and the
straightforward PyTorch a user would write (materialised masks from torch.rand, per-class loops).

GPU only: on the CPU interpreter timings mean nothing, so the module skips without CUDA.
Run:  python -m pytest bench/bench_kernels.py --benchmark-json=results.json
Sizes follow MobileNetV2 / VGG-like layers: K = 1280 channels at 7x7, 1000 classes.
Groups: one per kernel; within a group, compare the `triton`, `reference` and `naive` rows.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    pytest.skip("benchmarks need CUDA (interpreter timings are meaningless)",
                allow_module_level=True)
pytest.importorskip("triton")
pytest.importorskip("pytest_benchmark")

from chip_fast import rng  # noqa: E402
from chip_fast.maps import class_maps_reference, upsample_normalize_reference  # noqa: E402
from chip_fast.perturb import perturb_reference  # noqa: E402
from chip_fast.solver import fista_step_reference, soft_threshold  # noqa: E402
from chip_fast.stats import response_sums_reference  # noqa: E402
from chip_fast.kernels.perturb import perturb_triton  # noqa: E402
from chip_fast.kernels.prox import fista_step_triton  # noqa: E402
from chip_fast.kernels.reweight import layer_maps_triton, response_sums_triton  # noqa: E402

DEV = torch.device("cuda")


def timed(benchmark, fn, *, rounds=None):
    """Benchmark ``fn`` with a device synchronisation inside the timed region."""
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    run()  # warm-up: Triton compilation, cuBLAS handles, caching allocator
    if rounds is None:
        return benchmark(run)
    return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


# ------------------------------------------------------------------------------------------
# perturb: T perturbed activations of a (K, h, w) layer
# ------------------------------------------------------------------------------------------
PERTURB_CASES = {"K1280_7x7_T256": (32, 1280, (7, 7), 256),
                 "K96_56x56_T64": (8, 96, (56, 56), 64)}


def _perturb_inputs(case):
    v, k, spatial, t = PERTURB_CASES[case]
    g = torch.Generator(device=DEV).manual_seed(0)
    acts = torch.randn(v, k, *spatial, device=DEV, generator=g)
    view = torch.arange(t, device=DEV) % v
    classes = torch.arange(t, device=DEV) % 10
    samples = torch.arange(t, device=DEV)
    mu = torch.randn(k, device=DEV, generator=g)
    sigma = torch.rand(k, device=DEV, generator=g)
    return acts, view, classes, samples, mu, sigma


def _perturb_naive(acts, view, classes, samples, mu, sigma, p_keep=0.5):
    # What one writes without a counter RNG: materialised Bernoulli masks and full noise tensors.
    a = acts[view]
    z = torch.rand(a.shape[:2], device=a.device) < p_keep
    noise = mu[:, None, None] + sigma[:, None, None] * torch.randn_like(a)
    return torch.where(z[:, :, None, None], a, noise), z


@pytest.mark.parametrize("case", list(PERTURB_CASES))
@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_perturb(benchmark, case, impl):
    benchmark.group = f"perturb {case}"
    acts, view, classes, samples, mu, sigma = _perturb_inputs(case)
    kw = dict(seed=1234, p_keep=0.5, fill="noise", mu=mu, sigma=sigma)
    fn = {"triton": lambda: perturb_triton(acts, view, classes, samples, **kw),
          "reference": lambda: perturb_reference(acts, view, classes, samples, **kw),
          "naive": lambda: _perturb_naive(acts, view, classes, samples, mu, sigma)}[impl]
    timed(benchmark, fn)


# ------------------------------------------------------------------------------------------
# response sums: per class slot sum z*y and sum y
# ------------------------------------------------------------------------------------------
T_RESP, K_RESP, ROWS_RESP = 8192, 1280, 16


def _response_inputs():
    g = torch.Generator(device=DEV).manual_seed(1)
    samples = torch.arange(T_RESP, device=DEV)
    y = torch.randn(T_RESP, device=DEV, generator=g)
    rows = torch.arange(T_RESP, device=DEV) % ROWS_RESP
    return samples, y, rows


def _response_naive(y, rows, p_keep=0.5):
    # Materialised masks (torch.rand) and a Python loop over the class slots.
    z = (torch.rand(T_RESP, K_RESP, device=DEV) < p_keep).double()
    szy = torch.zeros(ROWS_RESP, K_RESP, dtype=torch.float64, device=DEV)
    sy = torch.zeros(ROWS_RESP, dtype=torch.float64, device=DEV)
    for c in range(ROWS_RESP):
        sel = rows == c
        yc = y[sel].double()
        szy[c] = (z[sel] * yc[:, None]).sum(0)
        sy[c] = yc.sum()
    return szy, sy


@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_response_sums(benchmark, impl):
    benchmark.group = f"response_sums T{T_RESP} K{K_RESP} rows{ROWS_RESP}"
    samples, y, rows = _response_inputs()
    fn = {"triton": lambda: response_sums_triton(7, samples, 0.5, K_RESP, y, rows, ROWS_RESP),
          "reference": lambda: response_sums_reference(
              rng.keep_masks(7, samples, K_RESP, 0.5), y, rows, ROWS_RESP),
          "naive": lambda: _response_naive(y, rows)}[impl]
    timed(benchmark, fn)


# ------------------------------------------------------------------------------------------
# layer maps: P (image, class) maps at 224x224
# ------------------------------------------------------------------------------------------
MAP_CASES = {"1img_1000cls": (1, 1000), "8img_1cls": (8, 1)}
K_MAP, C_MAP, HW_MAP, SIZE = 1280, 1000, (7, 7), (224, 224)


def _map_inputs(case):
    b, per_image = MAP_CASES[case]
    g = torch.Generator(device=DEV).manual_seed(2)
    acts = torch.randn(b, K_MAP, *HW_MAP, device=DEV, generator=g).relu()
    weights = torch.randn(C_MAP, K_MAP, device=DEV, generator=g) * 0.01
    image_index = torch.arange(b, device=DEV).repeat_interleave(per_image)
    class_index = torch.arange(per_image, device=DEV).repeat(b)
    return acts, weights, image_index, class_index


def _maps_naive(acts, weights, image_index, class_index):
    # A per-(image, class) Python loop, as a CAM tutorial would write it.
    out = []
    for b, c in zip(image_index.tolist(), class_index.tolist()):
        m = torch.relu((weights[c][:, None, None] * acts[b]).sum(0))
        m = F.interpolate(m[None, None], size=SIZE, mode="bilinear", align_corners=False)[0, 0]
        m = m - m.min()
        out.append(m / m.max() if m.max() > 0 else m)
    return torch.stack(out)


@pytest.mark.parametrize("case", list(MAP_CASES))
@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_layer_maps(benchmark, case, impl):
    benchmark.group = f"layer_maps {case} K{K_MAP} {HW_MAP}->{SIZE}"
    acts, weights, ii, ci = _map_inputs(case)
    fn = {"triton": lambda: layer_maps_triton(acts, weights, ii, ci, SIZE),
          "reference": lambda: upsample_normalize_reference(
              class_maps_reference(acts, weights, ii, ci), SIZE),
          "naive": lambda: _maps_naive(acts, weights, ii, ci)}[impl]
    timed(benchmark, fn, rounds=5 if impl == "naive" and case == "1img_1000cls" else None)


# ------------------------------------------------------------------------------------------
# FISTA step: K = 1280 channels, C = 1000 classes
# ------------------------------------------------------------------------------------------
K_FISTA, C_FISTA = 1280, 1000


def _fista_inputs(dtype):
    g = torch.Generator(device=DEV).manual_seed(3)
    a = torch.randn(K_FISTA, K_FISTA, device=DEV, dtype=dtype, generator=g)
    gram = a @ a.t() / K_FISTA
    w, v, r = (torch.randn(K_FISTA, C_FISTA, device=DEV, dtype=dtype, generator=g)
               for _ in range(3))
    lam = torch.rand(C_FISTA, device=DEV, dtype=dtype, generator=g) * 0.1
    return gram, w, v, r, lam


def _fista_naive(gram, w, v, r, eta, lam, momentum):
    # One class at a time, as a per-class Lasso loop would.
    w_next = torch.empty_like(w)
    v_next = torch.empty_like(v)
    for c in range(w.shape[1]):
        u = v[:, c] - eta * (gram @ v[:, c] - r[:, c])
        w_next[:, c] = soft_threshold(u, eta * lam[c])
        v_next[:, c] = w_next[:, c] + momentum * (w_next[:, c] - w[:, c])
    return w_next, v_next


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("impl", ["triton", "reference", "naive"])
def test_fista_step(benchmark, dtype, impl):
    benchmark.group = f"fista_step K{K_FISTA} C{C_FISTA} {dtype}"
    gram, w, v, r, lam = _fista_inputs(dtype)
    eta, momentum = 0.01, 0.5
    fn = {"triton": lambda: fista_step_triton(gram, w, v, r, eta, lam, False, momentum),
          "reference": lambda: fista_step_reference(gram, w, v, r, eta, lam, False, momentum),
          "naive": lambda: _fista_naive(gram, w, v, r, eta, lam, momentum)}[impl]
    timed(benchmark, fn, rounds=5 if impl == "naive" else None)
