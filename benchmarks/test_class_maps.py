"""Benchmark of the class maps: P (image, class) maps at 224x224; kernels
(``class_maps_triton``) vs ``upsample_normalize_reference(class_maps_reference(...))`` vs naive
PyTorch. Set-up in cuda_timing.py (GPU only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.cuda_timing import DEV, timed

from chip_fast.ops.class_maps import class_maps_reference, upsample_normalize_reference
from chip_fast.kernels.class_maps import class_maps_triton

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
def test_class_maps(benchmark, case, impl):
    benchmark.group = f"class_maps {case} K{K_MAP} {HW_MAP}->{SIZE}"
    acts, weights, ii, ci = _map_inputs(case)
    fn = {"triton": lambda: class_maps_triton(acts, weights, ii, ci, SIZE),
          "reference": lambda: upsample_normalize_reference(
              class_maps_reference(acts, weights, ii, ci), SIZE),
          "naive": lambda: _maps_naive(acts, weights, ii, ci)}[impl]
    timed(benchmark, fn, rounds=5 if impl == "naive" and case == "1img_1000cls" else None)
