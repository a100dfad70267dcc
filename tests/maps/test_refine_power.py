"""``refine_power`` of ``chip_fast.explain``: a planted map whose values the power must give
exactly, and where the power applies (the non-affine layers of a Refined map only)."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast.maps.explain import layer_maps, refine, refine_layer_powers
from chip_fast.models.split import split_model


def test_the_power_acts_on_each_activation_before_the_weighted_sum():
    # One channel on at two positions with 4 and 1, off elsewhere: the plain map is 1 / 0.25
    # there after min-max, at power 0.5 it is sqrt: 1 / 0.5. A channel of negative activation
    # keeps its sign and is cut by the ReLU either way.
    acts = torch.zeros(1, 2, 2, 2)
    acts[0, 0, 0, 0], acts[0, 0, 1, 1] = 4.0, 1.0
    acts[0, 1, 0, 1] = -9.0
    w = torch.tensor([[1.0, 1.0]])
    one = torch.zeros(1, dtype=torch.long)
    plain = layer_maps(acts, w, one, one, (2, 2))
    half = layer_maps(acts, w, one, one, (2, 2), power=0.5)
    assert torch.allclose(plain[0], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    assert torch.allclose(half[0], torch.tensor([[1.0, 0.0], [0.0, 0.5]]))


class _File:
    def __init__(self, paths=None):
        self.settings = {"paths": paths} if paths is not None else {}


def test_powers_only_for_non_affine_layers_of_a_refined_map():
    f = _File({"mid": "elementwise", "head": "linear_head", "deep": "affine"})
    assert refine_layer_powers(f, ["mid", "head", "deep"], 0.5) == {
        "mid": 0.5, "head": 0.5, "deep": 1.0}
    assert refine_layer_powers(f, ["mid"], 0.5) == {"mid": 1.0}       # one layer: METHOD.md's map
    assert refine_layer_powers(_File(), ["mid", "deep"], 0.5) == {"mid": 1.0, "deep": 1.0}


@pytest.fixture
def two_layers(tiny_net, tiny_data):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.1", "features.2"],
                                        classes=[0, 1], samples_per_class=16, progress=False)
    return imp, tiny_data[0][:4], torch.tensor([0, 1, 0, 1])


def test_explain_applies_the_power_to_the_elementwise_layer_only(tiny_net, two_layers):
    imp, images, classes = two_layers
    assert imp.settings["paths"] == {"features.1": "elementwise", "features.2": "affine"}
    acts, _ = split_model(tiny_net, imp.layers).forward(images)
    index = torch.arange(len(images))
    expected = refine([layer_maps(acts["features.1"], imp.weights["features.1"], index,
                                  classes, (16, 16), power=0.5),
                       layer_maps(acts["features.2"], imp.weights["features.2"], index,
                                  classes, (16, 16))])
    got = chip_fast.explain(tiny_net, imp, images, classes, refine_power=0.5)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got, chip_fast.explain(tiny_net, imp, images, classes))   # the default
    plain = refine([layer_maps(acts[l], imp.weights[l], index, classes, (16, 16))
                    for l in imp.layers])
    assert torch.allclose(chip_fast.explain(tiny_net, imp, images, classes, refine_power=1.0),
                          plain, atol=1e-6)
    single = dict(layers=["features.1"])
    assert torch.equal(chip_fast.explain(tiny_net, imp, images, classes, **single),
                       chip_fast.explain(tiny_net, imp, images, classes, refine_power=0.5,
                                         **single))
