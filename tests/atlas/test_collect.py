"""The channel atlas (``chip_fast.atlas.collect``): the streamed top-k is the exact top-k over all
views, whatever the batches, repeats and merges; patches are cut where the channel fires, in the
photo's own colours; the atlas survives its tensors; a distillation fills it from its own prefix
passes."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast.atlas.collect import ChannelAtlas, channel_maps, denormalizer, top_channels
from chip_fast.data.sources import make_view
from chip_fast.data.preprocess import Preprocess
from chip_fast.models.split import split_model


def _views(n: int, seed: int = 0) -> tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    keys = [(i % 3, i) for i in range(n)]
    views = torch.randn(n, 3, 32, 32, generator=g)
    acts = torch.randn(n, 5, 4, 4, generator=g)
    return keys, views, acts


def _brute_top(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Each channel's k largest per-view maxima, largest first: (K, k)."""
    return acts.flatten(2).amax(2).t().topk(k, dim=1).values


def test_streamed_top_k_is_the_exact_top_k_despite_batches_and_repeats():
    keys, views, acts = _views(40)
    atlas = ChannelAtlas(k=6, patch_px=8, patch_scale=3.0)
    stretch = denormalizer(None)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(3)).tolist()
    for lo in range(0, 40, 7):                   # odd batch sizes, random order
        idx = order[lo:lo + 7]
        atlas.observe([keys[i] for i in idx], views[idx], {"l": acts[idx]}, stretch)
    atlas.observe(keys[:10], views[:10], {"l": acts[:10]}, stretch)   # seen again: no effect
    a = atlas.layers["l"]
    torch.testing.assert_close(a.value, _brute_top(acts, 6))
    best = acts.flatten(2).amax(2)               # (views, K)
    for c in range(5):
        for j in range(6):
            view = int(a.key[c, j, 1])
            assert keys[view] == tuple(a.key[c, j].tolist())
            assert float(best[view, c]) == float(a.value[c, j])
    assert len({tuple(x) for x in a.key[0].tolist()}) == 6        # one slot per view


def test_merge_equals_one_atlas_of_all_views_and_is_symmetric():
    keys, views, acts = _views(30)
    stretch = denormalizer(None)
    whole, left, right = (ChannelAtlas(k=4, patch_px=8, patch_scale=3.0) for _ in range(3))
    whole.observe(keys, views, {"l": acts}, stretch)
    left.observe(keys[:18], views[:18], {"l": acts[:18]}, stretch)
    right.observe(keys[12:], views[12:], {"l": acts[12:]}, stretch)   # overlap 12..17
    for merged in (left.merge(right), right.merge(left)):
        m = merged.layers["l"]
        torch.testing.assert_close(m.value, whole.layers["l"].value)
        assert torch.equal(m.key, whole.layers["l"].key)
        assert torch.equal(m.patch, whole.layers["l"].patch)


def test_patch_is_cut_where_the_channel_fires_in_the_photos_colours():
    prep = Preprocess()
    rgb = torch.zeros(2, 3, 64, 64)
    rgb[0, 0, 40:48, 8:16] = 1.0                 # a red cell, bottom left of view 0
    rgb[1, 2, 8:16, 48:56] = 1.0                 # a blue cell, top right of view 1
    views = (rgb - torch.tensor(prep.mean)[:, None, None]) / torch.tensor(prep.std)[:, None, None]
    acts = torch.nn.functional.avg_pool2d(rgb, 8)          # channel 0 = red, 2 = blue; 8x8 grid
    atlas = ChannelAtlas(k=2, patch_px=12, patch_scale=1.0)
    atlas.observe([(0, 0), (0, 1)], views, {"l": acts}, denormalizer(prep))
    a = atlas.layers["l"]
    red, blue = a.patch[0, 0].float(), a.patch[2, 0].float()
    assert tuple(a.key[0, 0].tolist()) == (0, 0) and tuple(a.key[2, 0].tolist()) == (0, 1)
    assert red[..., 0].mean() > 200 and red[..., 1:].max() < 30     # exact colours back
    assert blue[..., 2].mean() > 200 and blue[..., :2].max() < 30
    y0, x0, side = a.where[0, 0].tolist()
    assert (y0, x0, side) == (40, 8, 8)
    assert tuple(a.where[2, 0].tolist()) == (8, 48, 8)


def test_tensors_round_trip_and_malformed_tensors_are_refused():
    keys, views, acts = _views(12)
    atlas = ChannelAtlas(k=3, patch_px=8, patch_scale=2.5)
    atlas.observe(keys, views, {"a.b": acts, "c": acts[:, :2]}, denormalizer(None))
    tensors = atlas.to_tensors()
    bad = dict(tensors, **{"atlas/patch/c": tensors["atlas/patch/c"][:, :2]})
    with pytest.raises(ValueError, match="patch"):
        ChannelAtlas.from_tensors(bad)
    with pytest.raises(ValueError, match="missing"):
        ChannelAtlas.from_tensors({k: v for k, v in tensors.items() if k != "atlas/key/c"})
    for back in (ChannelAtlas.from_tensors(tensors),):
        assert (back.k, back.patch_px, back.patch_scale) == (3, 8, 2.5)
        for layer, a in atlas.layers.items():
            for name in ("value", "key", "where", "patch"):
                assert torch.equal(getattr(back.layers[layer], name), getattr(a, name))


def test_distillation_fills_every_channel_from_its_own_views(tiny_net, tiny_data, tmp_path):
    images, labels = tiny_data
    layers = ["features.1", "features.2"]
    # a float32 prefix: the atlas's values are compared with the float32 forward's below
    kwargs = dict(samples_per_class=16, augment=2, fill="noise", progress=False,
                  prefix_dtype="float32")
    imp = chip_fast.distill_all_classes(tiny_net, (images, labels), layers, atlas=3, **kwargs)
    atlas = imp.atlas
    assert set(atlas.layers) == set(layers)
    split = split_model(tiny_net, ["features.2"])
    a = atlas.layers["features.2"]
    assert (a.count() == 3).all()
    for c in range(a.channels):                  # each value is that view's channel maximum
        for j in range(3):
            cls, v = a.key[c, j].tolist()
            members = (labels == cls).nonzero().flatten()
            view = make_view(images[members[v % len(members)]], cls, v, len(members), 0)
            with torch.no_grad():
                act = split.forward(view[None])[0]["features.2"][0, c]
            torch.testing.assert_close(act.max(), a.value[c, j])
    # The atlas watches; it changes nothing of the importance.
    ref = chip_fast.distill_all_classes(tiny_net, (images, labels), layers, **kwargs)
    torch.testing.assert_close(imp.weights["features.2"], ref.weights["features.2"])
    assert ref.atlas is None
    # It travels in the importance file, under the file's integrity digests.
    back = chip_fast.load_importance(imp.save(tmp_path / "m.chip"))
    for layer in layers:
        for name in ("value", "key", "where", "patch"):
            assert torch.equal(getattr(back.atlas.layers[layer], name),
                               getattr(atlas.layers[layer], name))


def test_resumed_job_has_the_atlas_of_the_whole_job(tiny_net, tiny_data, tmp_path, monkeypatch):
    """Killed after some units, resumed from the checkpoint: the atlas equals one run's."""
    kwargs = dict(samples_per_class=32, seed=2, samples_per_unit=16, classes_per_unit=2,
                  atlas=2)
    whole = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], progress=False,
                                          **kwargs)
    calls = {"n": 0}
    real_add = chip_fast.distill.state.DistillState.add

    def dying_add(self, unit, partial):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_add(self, unit, partial)
    monkeypatch.setattr(chip_fast.distill.state.DistillState, "add", dying_add)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], progress=False,
                                      checkpoint=ckpt, checkpoint_every=0, **kwargs)
    assert list(ckpt.iterdir())                  # two units and their views are in there
    monkeypatch.setattr(chip_fast.distill.state.DistillState, "add", real_add)
    resumed = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], progress=False,
                                            checkpoint=ckpt, **kwargs)
    a, b = whole.atlas.layers["features.2"], resumed.atlas.layers["features.2"]
    torch.testing.assert_close(b.value, a.value)
    assert torch.equal(b.key, a.key) and torch.equal(b.patch, a.patch)


def test_a_file_whose_atlas_does_not_fit_its_layers_is_refused(tiny_net, tiny_data, tmp_path):
    from chip_fast.importance.core import ImportanceFileError
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=16,
                                        atlas=2, progress=False)
    k = imp.channels("features.2")
    imp.atlas = ChannelAtlas.empty({"features.2": k + 1}, 2)
    with pytest.raises(ImportanceFileError, match="atlas"):
        chip_fast.load_importance(imp.save(tmp_path / "bad.chip"))


def test_top_channels_and_channel_maps(tiny_net):
    w = torch.zeros(6, 16)
    w[2, 5], w[2, 9], w[2, 1] = 0.5, 2.0, -3.0
    imp = chip_fast.Importance(weights={"features.2": w}, classes=[2], num_classes=6,
                               fingerprint={}, settings={})
    top = top_channels(imp, "features.2", 2, n=5)
    assert [(t.channel, t.weight) for t in top] == [(9, 2.0), (5, 0.5)]
    assert all(t.se != t.se for t in top)     # NaN: this importance keeps no standard errors
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = channel_maps(tiny_net, "features.2", x, [9, 5])
    assert maps.shape == (2, 2, 16, 16) and maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():
        act = split_model(tiny_net, ["features.2"]).forward(x)[0]["features.2"][:, 9]
    peak = act.flatten(1).argmax(1)              # the hottest cell is hottest upsampled too
    for i in range(2):
        r, c = divmod(int(peak[i]), act.shape[-1])
        cell = maps[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
        assert cell.max() >= 0.9
