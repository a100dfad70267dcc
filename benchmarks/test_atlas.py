"""Benchmarks of the channel atlas's two costs on a CPU, each against the way it was done before,
in the same run, both sides checked to give the same answer first:

- cutting a job's first batch of patches (``chip_fast.atlas.patches``): the views shrunk once
  per layer against every patch pixel's whole footprint averaged in the full-size view
  (``cut_patches_reference``); MobileNetV2's 7x7 layer at its measured side (5.4 strides, 172
  px), one 40-px patch for each of its 1,280 channels x 6 slots, 32 views of 224 px;
- measuring the receptive field (``chip_fast.atlas.receptive_field.gradient_rows``): the
  atlas's 8 views x 4 channels in passes of ERF_ROW_CHUNK rows against all rows in one pass,
  MobileNetV2 cut at its default layers.

    python -m pytest benchmarks/test_atlas.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from chip_fast.atlas import receptive_field
from chip_fast.atlas.patches import cut_patches, cut_patches_reference
from chip_fast.models.split import SplitModel

pytest.importorskip("pytest_benchmark")

_state: dict[str, object] = {}


def _patch_inputs():
    if "rgb" not in _state:
        g = torch.Generator().manual_seed(0)
        rgb = torch.nn.functional.interpolate(torch.rand(32, 3, 28, 28, generator=g),
                                              size=(224, 224), mode="bicubic").clamp(0, 1)
        n = 1280 * 6
        _state["rgb"] = (rgb, torch.randint(0, 32, (n,), generator=g),
                         torch.randint(0, 7, (n, 2), generator=g))
    return _state["rgb"]


@pytest.mark.parametrize("impl", ["shrunk_views", "whole_footprint"])
def test_cut_patches(benchmark, impl):
    benchmark.group = "atlas patches 7x7 layer, 7680 patches of 40 px from 32 views"
    torch.set_num_threads(1)   # load-robust: one core, no thread-pool noise
    rgb, view, cell = _patch_inputs()
    args = (rgb, view, cell, (7, 7), 40, 5.4)
    fast, ref = cut_patches(*args), cut_patches_reference(*args)
    assert torch.equal(fast[1], ref[1])                       # the same squares
    # the same pixels up to resampling (a texture at the scale of a patch pixel: the hard case)
    assert (fast[0].float() - ref[0].float()).abs().mean() < 3.0
    fn = {"shrunk_views": cut_patches, "whole_footprint": cut_patches_reference}[impl]
    benchmark.pedantic(fn, args=args, rounds=5, warmup_rounds=1)


def _erf_inputs():
    if "split" not in _state:
        torch.manual_seed(0)   # timing does not depend on the weights' values
        model = torchvision.models.mobilenet_v2().eval()
        _state["split"] = SplitModel(model, ["features.14.conv.0", "features.18"])
        _state["views"] = torch.randn(8, 3, 224, 224)
    return _state["split"], _state["views"]


@pytest.mark.parametrize("impl", ["row_chunks", "all_rows"])
def test_gradient_rows(benchmark, impl, monkeypatch):
    benchmark.group = "atlas receptive field, mobilenet_v2, 8 views x 4 channels"
    torch.set_num_threads(1)
    split, views = _erf_inputs()
    maps, layers = receptive_field.layer_maps(split), split.layers
    chunked = receptive_field.gradient_rows(maps, views, layers)
    monkeypatch.setattr(receptive_field, "ERF_ROW_CHUNK", 10 ** 6)
    whole = receptive_field.gradient_rows(maps, views, layers)
    for layer in layers:
        torch.testing.assert_close(chunked[layer], whole[layer], rtol=1e-4, atol=1e-6)
    if impl == "row_chunks":
        monkeypatch.undo()
    benchmark.pedantic(receptive_field.gradient_rows, args=(maps, views, layers), rounds=3,
                       warmup_rounds=1)
