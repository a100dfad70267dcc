"""CHIP maps of the real MobileNetV2 on real ImageNet photos (skipped without ../shared/data),
checked against references computed here with plain torch: the activations of the layers by
calling the model's own submodules, the maps from them and the weights by the formula, and the
importance that METHOD.md's perturbation implies where the tail is linear."""
import pytest
import torch
import torch.nn.functional as F

import chip_fast

CLASSES = [1, 207, 281, 954]  # goldfish, golden retriever, tabby cat, banana
LAYERS = ["features.14.conv.0", "features.18"]   # MobileNetV2's default layers


@pytest.fixture(scope="module")
def distilled(mobilenet_v2, sample_train):
    src = chip_fast.ImageFolderSource(sample_train)
    imp = chip_fast.distill_all_classes(mobilenet_v2, src, LAYERS, classes=CLASSES,
                                        samples_per_class=96, augment=2, seed=0, progress=False,
                                        fill="noise")   # the reference below is for noise fill
    images = torch.stack([src.load(c, 0) for c in CLASSES])
    return imp, images


def activations_by_hand(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both layers' outputs from MobileNetV2's submodules, without chip_fast."""
    with torch.no_grad():
        mid = model.features[:14](images)
        return {"features.14.conv.0": model.features[14].conv[0](mid),
                "features.18": model.features(images)}


def map_by_hand(acts: torch.Tensor, w: torch.Tensor, size) -> torch.Tensor:
    """ReLU(sum_k max(W[c, k], 0) A_k), bilinear to ``size``, min-max normalised (README)."""
    m = torch.relu(torch.einsum("bk,bkhw->bhw", w.clamp(min=0), acts))
    m = F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    return (m - lo) / (hi - lo)


def test_maps_shape_range_and_finite(mobilenet_v2, distilled):
    imp, images = distilled
    assert imp.class_names[281] == "tabby"
    for layers in (None, LAYERS[:1], LAYERS[1:]):
        maps = chip_fast.explain(mobilenet_v2, imp, images, CLASSES, layers=layers)
        assert maps.shape == (4, 224, 224)
        assert torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
        assert (maps.flatten(1).amax(1) == 1).all()  # each map uses its full range


def test_importance_is_that_of_its_class(mobilenet_v2, distilled):
    """At features.18 the tail is global average pooling + a linear head, so the perturbed
    logit of class c is exactly b_c + sum_k W_ck (z_k m_k + (1 - z_k) n_k), with m_k the
    channel's spatial mean on the view and n_k that of the noise fill (mean mu_k). The importance
    the regression estimates is therefore beta_ck = W_ck (m_ck - mu_k), averaged over the class's
    views (here the photo and its mirror image). Each distilled row must match its own class's
    beta better than any other class's: the importance is class-discriminative, by an analytic
    reference rather than by two maps merely differing."""
    imp, images = distilled
    with torch.no_grad():
        m = mobilenet_v2.features(torch.cat([images, images.flip(-1)])).mean((2, 3))
    m = m.view(2, len(CLASSES), -1).mean(0)
    beta = mobilenet_v2.classifier[1].weight.detach()[CLASSES] * (m - imp.fill_mean["features.18"])
    fit = imp.weights["features.18"][CLASSES]
    assert (fit != 0).sum(1).min() > 0
    a = fit - fit.mean(1, keepdim=True)
    b = beta - beta.mean(1, keepdim=True)
    corr = (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])
    off = corr - torch.diag_embed(torch.full((len(CLASSES),), float("inf")))
    # 96 samples for 1280 channels recover the support only in part (measured diagonal
    # 0.13-0.19, off-diagonal below 0.07): the margin, not the size, is the point.
    assert (corr.diagonal() > 0.1).all(), corr
    assert (corr.diagonal() > off.amax(1) + 0.05).all() and \
        (corr.diagonal() > off.amax(0) + 0.05).all(), corr


def test_importance_round_trip_gives_the_maps_of_the_formula(mobilenet_v2, distilled, tmp_path):
    imp, images = distilled
    back = chip_fast.load_importance(imp.save(tmp_path / "mnv2.chip"))
    assert back.layers == imp.layers and back.classes == CLASSES
    assert back.settings["samples_per_class"] == 96 and back.class_ids[1] == "n01443537"
    for layer in imp.layers:
        assert torch.equal(back.weights[layer], imp.weights[layer])
        torch.testing.assert_close(back.gram[layer], imp.gram[layer], rtol=0, atol=0)
    acts = activations_by_hand(mobilenet_v2, images)
    by_hand = {l: map_by_hand(acts[l], imp.weights[l][CLASSES], (224, 224)) for l in LAYERS}
    for layer in LAYERS:
        got = chip_fast.explain(mobilenet_v2, back, images, CLASSES, layers=[layer])
        torch.testing.assert_close(got, by_hand[layer], atol=2e-5, rtol=0)
    # Refined CHIP: the 14x14 layer (an elementwise, non-affine tail) enters with its
    # activations at power 0.5 (ReLU6 output, so no sign to keep), features.18 (affine) plain.
    assert back.settings["paths"] == {LAYERS[0]: "elementwise", LAYERS[1]: "affine"}
    mid = map_by_hand(acts[LAYERS[0]] ** 0.5, imp.weights[LAYERS[0]][CLASSES], (224, 224))
    refined = mid * by_hand[LAYERS[1]]
    lo, hi = refined.amin((1, 2), keepdim=True), refined.amax((1, 2), keepdim=True)
    torch.testing.assert_close(chip_fast.explain(mobilenet_v2, back, images, CLASSES),
                               (refined - lo) / (hi - lo), atol=2e-5, rtol=0)
