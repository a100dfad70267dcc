"""CHIP maps of the real MobileNetV2 on real ImageNet photos (skipped without ../shared/data)."""
import pytest
import torch

import chip_fast

CLASSES = [1, 207, 281, 954]  # goldfish, golden retriever, tabby cat, banana


@pytest.fixture(scope="module")
def distilled(mobilenet_v2, sample_train):
    src = chip_fast.ImageFolderSource(sample_train)
    imp = chip_fast.distill_all_classes(mobilenet_v2, src, ["features.13", "features.18"],
                                        classes=CLASSES, samples_per_class=96, augment=2,
                                        seed=0, progress=False)
    images = torch.stack([src.load(c, 0) for c in CLASSES])
    return imp, images


def test_maps_shape_range_and_finite(mobilenet_v2, distilled):
    imp, images = distilled
    assert imp.class_names[281] == "tabby"
    for layers in (None, ["features.13"], ["features.18"]):
        maps = chip_fast.explain(mobilenet_v2, imp, images, CLASSES, layers=layers)
        assert maps.shape == (4, 224, 224)
        assert torch.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
        assert (maps.flatten(1).amax(1) == 1).all()  # each map uses its full range


def test_maps_are_class_discriminative(mobilenet_v2, distilled):
    imp, images = distilled
    for layer in ("features.18", "features.13"):
        w = imp.weights[layer][CLASSES]
        assert (w != 0).sum(1).min() > 0
        own = chip_fast.explain(mobilenet_v2, imp, images, CLASSES, layers=[layer])
        other = chip_fast.explain(mobilenet_v2, imp, images, CLASSES[1:] + CLASSES[:1], layers=[layer])
        diff = (own - other).abs().flatten(1).mean(1)
        assert (diff > 0.05).all(), diff


def test_importance_round_trip(mobilenet_v2, distilled, tmp_path):
    imp, images = distilled
    back = chip_fast.load_importance(imp.save(tmp_path / "mnv2.chip"))
    assert back.layers == imp.layers and back.classes == CLASSES
    assert back.settings["samples_per_class"] == 96 and back.class_ids[1] == "n01443537"
    for layer in imp.layers:
        assert torch.equal(back.weights[layer], imp.weights[layer])
        assert back.gram[layer].shape == (imp.channels(layer),) * 2
    torch.testing.assert_close(chip_fast.explain(mobilenet_v2, back, images, CLASSES),
                               chip_fast.explain(mobilenet_v2, imp, images, CLASSES))
