"""Token and channels-last layers read as C channels over a grid (chip_fast.models.layouts), on
miniature ViT and Swin layouts: the inference, the split's channels-first activation against the
model's own output, a channel zeroed through the split's tail against the same channel zeroed
inside the model, the tail paths, distillation and maps. The timm models themselves are in
test_timm_tokens.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.models.layouts import CHANNELS_LAST, MAPS, TOKENS, Layout, infer_layout
from chip_fast.models.split import HookedModel, SplitModel, split_model

from tests.helpers import TinySwin, TinyViT, own_outputs


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_layouts_are_inferred_from_the_convolutions_grids():
    convs = {(14, 14)}
    assert infer_layout((2, 197, 192), convs, 2) == Layout(TOKENS, (14, 14), 1)
    assert infer_layout((2, 201, 192), convs, 2) == Layout(TOKENS, (14, 14), 5)   # registers
    assert infer_layout((2, 192, 14, 14), convs, 2) == Layout(MAPS, (14, 14))
    # Swin: the patch embedding's 56x56 grid, halved by each patch merging
    assert infer_layout((2, 7, 7, 768), {(56, 56)}, 2) == Layout(CHANNELS_LAST, (7, 7))
    assert infer_layout((2, 49, 3072), {(56, 56)}, 2) == Layout(TOKENS, (7, 7), 0)
    assert infer_layout((128, 49, 96), {(56, 56)}, 2) is None      # windows, not images
    assert infer_layout((2, 3, 197, 197), convs, 2) is None        # attention weights
    assert infer_layout((2, 3, 197, 64), convs, 2) is None         # queries of 3 heads
    assert infer_layout((2, 256, 6, 6), {(13, 13)}, 2) == Layout(MAPS, (6, 6))  # AlexNet's pool
    assert infer_layout((2, 192, 197), convs, 2) is None           # tokens on dimension 2
    assert infer_layout((2, 192), convs, 2) is None                # a vector: no positions
    assert infer_layout((2, 192, 1, 1), convs, 2) == Layout(MAPS, (1, 1))   # warned at bind


@pytest.mark.parametrize("extra", [1, 5])
def test_token_activations_are_every_token_channels_first(extra):
    torch.manual_seed(0)
    model = TinyViT(extra=extra).eval()
    x = _images()
    split = SplitModel(model, ["act"])
    with torch.no_grad():
        out = split.run_prefix(x)
        torch.testing.assert_close(split.logits(out), model(x))
        maps, _ = split.forward(x)
    native = own_outputs(model, ["act"], x)["act"]                      # (N, extra + 16, 32)
    assert split.layouts["act"] == Layout(TOKENS, (4, 4), extra)
    torch.testing.assert_close(split.activation(out, "act"), native.transpose(1, 2))
    # the maps: the grid tokens in raster order, the class and register tokens dropped
    torch.testing.assert_close(maps["act"], native[:, extra:].transpose(1, 2).unflatten(2, (4, 4)))


def _zeroed_inside(model: nn.Module, layer: str, x: torch.Tensor, channel: int) -> torch.Tensor:
    """The model's logits with ``channel`` (the last axis: tokens and channels-last) zeroed at
    ``layer``'s output, everywhere, inside the model."""
    def hook(_m, _i, out):
        out = out.clone()
        out[..., channel] = 0
        return out
    h = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        h.remove()


@pytest.mark.parametrize("model,layer,channels", [(TinyViT(), "act", 32),
                                                  (TinySwin(), "act", 32),
                                                  (TinySwin(), "merge", 16)])
def test_a_channel_zeroed_through_the_tail_is_the_models_own_channel(model, layer, channels):
    """What distillation does to a perturbed network (the channel zeroed in the channels-first
    activation, then the layer's tail) is the model with that channel zeroed at every token."""
    model.eval()
    x = _images()
    split = SplitModel(model, [layer])
    with torch.no_grad():
        out = split.run_prefix(x)
        a = split.activation(out, layer)
        assert a.shape[1] == channels                 # not a grid axis read as channels
        for k in (0, channels - 1):
            b = a.clone()
            b[:, k] = 0
            got = split.run_tail(layer, b, out, torch.arange(len(x)))
            torch.testing.assert_close(got, _zeroed_inside(model, layer, x, k))


@pytest.mark.parametrize("model,layer", [(TinySwin(), "merge"),
                                         (TinyViT(pool="avg"), "final"),
                                         (TinyViT(), "final")])
def test_token_tails_take_the_elementwise_path(model, layer):
    """Pooling + Linear after a channels-last or token layer looks affine, but its mean is not
    the channels-first activation's spatial mean (ViT's leaves out the class token): the affine,
    exact and head shortcuts must not be taken."""
    torch.manual_seed(0)
    model.eval()
    x = _images()
    imp = chip_fast.distill_all_classes(model, (x, torch.tensor([0, 1, 2, 3])), [layer],
                                        samples_per_class=64, progress=False)
    assert imp.settings["paths"] == {layer: "elementwise"}
    assert imp.settings["estimators"] == {layer: "sampled"}
    assert imp.weights[layer].shape == (4, model.head.in_features)


# Built inside the test after seeding: a model built at collection would take its weights from
# whatever the modules collected before it drew, and a map of these random models can be blank.
@pytest.mark.parametrize("make", [TinyViT, lambda: TinyViT(extra=5), TinySwin],
                         ids=["vit", "vit-extra5", "swin"])
def test_token_models_distil_and_explain_at_their_default_layer(make):
    torch.manual_seed(0)
    model = make().eval()
    layers = chip_fast.default_layers(model, input_size=16)
    assert layers == ["act"]
    x, labels = _images(), torch.tensor([0, 1, 2, 3])
    imp = chip_fast.distill_all_classes(model, (x, labels), samples_per_class=64, atlas=2,
                                        progress=False)
    assert imp.weights["act"].shape == (4, 32)
    assert (imp.weights["act"].abs().sum(1) > 0).all()
    assert imp.atlas.layers["act"].value.shape == (32, 2)
    maps = chip_fast.explain(model, imp, x, labels)
    assert maps.shape == (4, 16, 16)
    assert (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) > 0.1).all()


def test_untraceable_token_models_give_grid_maps():
    model = TinyViT(untraceable=True).eval()
    split = split_model(model, ["act"])
    assert isinstance(split, HookedModel)
    x = _images(2)
    with torch.no_grad():
        maps, _ = split.forward(x)
    native = own_outputs(model, ["act"], x)["act"]
    torch.testing.assert_close(maps["act"], native[:, 1:].transpose(1, 2).unflatten(2, (4, 4)))


def test_a_layer_that_is_no_grid_is_refused_in_one_line():
    model = TinyViT().eval()
    with pytest.raises(chip_fast.LayerError) as err:
        SplitModel(model, ["mix"]).run_prefix(_images(2))
    msg = str(err.value)
    assert "layer 'mix' returns (2, 8, 17)" in msg and "choose another layer" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("layer", ["classifier", "pool"])
def test_a_layer_without_positions_is_refused_or_warned(layer):
    """A vector per image (a Linear's output) has no positions to perturb into a map: refused
    naming the layer and its shape. A pooled (N, C, 1, 1) output has one position: its
    importance is sound, so it is distilled, with a warning that its maps are constant."""
    import warnings
    import chip_fast
    from tests.helpers import TinyNet
    model = TinyNet().eval()
    data = (_images(4), torch.arange(4) % 2)
    if layer == "classifier":
        with pytest.raises(ValueError, match=r"'classifier' returns \(1, 6\) .*neither"):
            chip_fast.distill_all_classes(model, data, [layer], samples_per_class=8,
                                          progress=False)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imp = chip_fast.distill_all_classes(model, data, [layer], samples_per_class=8,
                                            progress=False)
    assert imp.weights[layer].shape == (6, 16)
    assert any("one position per image" in str(w.message) for w in caught)
