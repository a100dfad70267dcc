"""The atlas's patch side (``chip_fast.atlas.collect``): patches are cut to each layer's side
(a fixed number of strides, or the ERF measured on the observer's first views), clamped to the
view; the side is recorded with the atlas, survives its tensors, and merges refuse atlases cut
differently or keep one measurement whatever the order."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast.atlas.collect import LEGACY_SCALE, ChannelAtlas, denormalizer
from chip_fast.atlas.receptive_field import ERF_VIEWS, layer_maps, measure_erf
from chip_fast.atlas.report import patch_note
from chip_fast.models.split import HookedModel, split_model


def _batch(n: int = 6, seed: int = 0, size: int = 32, grid: int = 4):
    g = torch.Generator().manual_seed(seed)
    keys = [(i % 2, i + 10 * seed) for i in range(n)]
    return keys, torch.randn(n, 3, size, size, generator=g), torch.randn(n, 5, grid, grid,
                                                                        generator=g)


def _sides(atlas: ChannelAtlas, layer: str = "l") -> set[int]:
    a = atlas.layers[layer]
    return {int(s) for s in a.where[..., 2][torch.isfinite(a.value)]}


@pytest.mark.parametrize("scale, side", [(1.0, 8), (2.5, 20), (3.0, 24), (100.0, 32)])
def test_fixed_scale_cuts_that_many_strides_clamped_to_the_view(scale, side):
    keys, views, acts = _batch()                 # 32 px views, a 4x4 grid: stride 8
    atlas = ChannelAtlas(k=3, patch_px=8, patch_scale=scale)
    atlas.observe(keys, views, {"l": acts}, denormalizer(None))
    assert _sides(atlas) == {side} and atlas.sides == {"l": scale}
    a = atlas.layers["l"]
    y0, x0 = a.where[..., 0], a.where[..., 1]
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + side <= 32).all() \
        and (x0 + side <= 32).all()


def test_measured_side_is_used_and_an_unmeasured_layer_is_refused():
    keys, views, acts = _batch()
    atlas = ChannelAtlas(k=3, patch_px=8, patch_scale=None)
    with pytest.raises(ValueError, match="not known yet"):
        atlas.observe(keys, views, {"l": acts}, denormalizer(None))
    assert not atlas.layers and not atlas._seen          # nothing half done
    atlas.sides["l"] = 1.5
    atlas.observe(keys, views, {"l": acts}, denormalizer(None))
    assert _sides(atlas) == {12}


def test_observer_measures_the_erf_on_its_first_views(tiny_net):
    layers = ["features.1", "features.2"]
    split = split_model(tiny_net, layers)
    g = torch.Generator().manual_seed(4)
    batches = [torch.randn(10, 3, 16, 16, generator=g) for _ in range(2)]
    atlas = ChannelAtlas.empty({"features.1": 16, "features.2": 16}, k=2, patch_px=6,
                               patch_scale=None)
    observe = atlas.observer(split, denormalizer(None))
    with torch.inference_mode():                 # as the distillation's prefix passes run
        for i, views in enumerate(batches):
            keys = [(1, 10 * i + j) for j in range(10)]
            observe(keys, views, split.run_prefix(views))
    want = measure_erf(layer_maps(split), batches[0][:ERF_VIEWS], layers)
    assert atlas.measured_on == (1, 0)
    for layer in layers:
        assert atlas.sides[layer] == want[layer].side_strides > 0
        stride = want[layer].stride
        assert _sides(atlas, layer) == {min(16, round(atlas.sides[layer] * stride))}
    hooked = ChannelAtlas(patch_scale=None)      # a model fx cannot trace measures alike
    hooked.measure(HookedModel(tiny_net, layers), [(1, 0)], batches[0])
    assert hooked.sides == atlas.sides


def test_recorded_side_survives_its_tensors_and_legacy_tensors_read_as_three_strides():
    keys, views, acts = _batch()
    atlas = ChannelAtlas(k=3, patch_px=8, patch_scale=None, sides={"l": 2.0, "m": 4.25},
                         measured_on=(0, 3))
    atlas.observe(keys, views, {"l": acts}, denormalizer(None))
    tensors = atlas.to_tensors()
    back = ChannelAtlas.from_tensors(tensors)
    assert back.patch_scale is None and back.measured_on == (0, 3)
    assert back.sides == {"l": 2.0, "m": 4.25}
    assert torch.equal(back.layers["l"].where, atlas.layers["l"].where)
    fixed = ChannelAtlas.from_tensors(ChannelAtlas.empty({"l": 5}, 3, 8, 2.0).to_tensors())
    assert (fixed.patch_scale, fixed.sides, fixed.measured_on) == (2.0, {"l": 2.0}, None)
    unmeasured = ChannelAtlas.from_tensors(ChannelAtlas.empty({"l": 5}, 3, 8, None).to_tensors())
    assert (unmeasured.patch_scale, unmeasured.sides, unmeasured.measured_on) == (None, {}, None)
    old = {k: v for k, v in tensors.items() if k.split("/")[1] in ("value", "key", "where",
                                                                   "patch")}
    legacy = ChannelAtlas.from_tensors(old)      # written before the side was recorded
    assert legacy.patch_scale == LEGACY_SCALE and legacy.sides == {"l": LEGACY_SCALE}


def test_merge_refuses_different_cuts_and_keeps_the_first_measurement_in_any_order():
    stretch = denormalizer(None)
    fixed = ChannelAtlas(k=3, patch_px=8, patch_scale=3.0)
    other = ChannelAtlas(k=3, patch_px=8, patch_scale=2.0)
    measured = ChannelAtlas(k=3, patch_px=8, patch_scale=None)
    with pytest.raises(ValueError, match="patch_scale must be > 0"):
        ChannelAtlas(patch_scale=0.0)
    for a, b in ((fixed, other), (fixed, measured), (measured, fixed)):
        with pytest.raises(ValueError, match="cut to .* with one cut to"):
            a.merge(b)
    left = ChannelAtlas(k=3, patch_px=8, patch_scale=None, sides={"l": 2.0}, measured_on=(0, 0))
    right = ChannelAtlas(k=3, patch_px=8, patch_scale=None, sides={"l": 3.0}, measured_on=(1, 5))
    for atlas, seed in ((left, 0), (right, 1)):
        keys, views, acts = _batch(seed=seed)
        atlas.observe(keys, views, {"l": acts}, stretch)
    for m in (left.merge(right), right.merge(left)):
        assert m.sides == {"l": 2.0} and m.measured_on == (0, 0)
        assert _sides(m) <= {16, 24}             # each patch keeps the side it was cut at
    fresh = ChannelAtlas.empty({"l": 5}, 3, 8, None)
    fresh.absorb(right)                          # an unmeasured atlas takes the measurement
    assert fresh.sides == {"l": 3.0} and fresh.measured_on == (1, 5)


def test_distillation_records_the_measured_side_in_its_file(tiny_net, tiny_data, tmp_path):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=16,
                                        atlas=2, progress=False)
    atlas = imp.atlas
    assert atlas.patch_scale is None and atlas.measured_on is not None
    stride = 16 / 4                              # tiny_net's features.2: 4x4 on 16 px
    assert _sides(atlas, "features.2") == {min(16, round(atlas.sides["features.2"] * stride))}
    back = chip_fast.load_importance(imp.save(tmp_path / "m.chip")).atlas
    assert back.sides == atlas.sides and back.measured_on == atlas.measured_on


def test_the_page_says_what_area_the_patches_show():
    keys, views, acts = _batch()
    measured = ChannelAtlas(k=3, patch_px=8, patch_scale=None, sides={"l": 5.75})
    measured.observe(keys, views, {"l": acts}, denormalizer(None))
    assert "l 5.8" in patch_note(measured) and "measured" in patch_note(measured)
    fixed = ChannelAtlas(k=3, patch_px=8, patch_scale=3.0)
    fixed.observe(keys, views, {"l": acts}, denormalizer(None))
    assert "l 3.0" in patch_note(fixed) and "fixed" in patch_note(fixed)
    assert patch_note(ChannelAtlas(k=3, patch_px=8, patch_scale=None)) == ""
