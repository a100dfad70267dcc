"""Preprocessing geometry (``chip_fast.data.preprocess``): boxes follow the pixels through a
plain resize, through resize + centre crop and through timm's squash; the interpolation is
the one asked for."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from chip_fast.data.preprocess import Preprocess, transform_boxes


def test_box_transforms_resize_and_center_crop():
    boxes = np.array([[0, 0, 227, 227], [22.7, 45.4, 113.5, 227]])
    assert np.allclose(transform_boxes(boxes, (227, 227), "resize", 224),
                       [[0, 0, 224, 224], [22.4, 44.8, 112, 224]])
    # 400 x 300 -> short side 256: 341 x 256; central 224 crop starts at (58, 16)
    b = np.array([[0, 0, 400, 300], [0, 0, 40, 40], [200, 150, 260, 210]], float)
    out = transform_boxes(b, (400, 300), "center_crop", 224, 256)
    sx, sy = 341 / 400, 256 / 300                                     # torchvision truncates 341.3
    assert np.allclose(out[0], [0, 0, 224, 224])                     # clipped by the crop
    assert len(out) == 2                                             # (0,0,40,40) fell outside
    assert np.allclose(out[1], [200 * sx - 58, 150 * sy - 16, 260 * sx - 58, 210 * sy - 16])


@pytest.mark.parametrize("mode", ["resize", "center_crop", "squash"])
def test_boxes_follow_the_pixels(mode):
    """A bright rectangle drawn in a photo lands where its transformed box says."""
    img = np.zeros((300, 400, 3), np.uint8)
    img[90:210, 150:330] = 255
    box = np.array([[150, 90, 330, 210.]])
    x = Preprocess(size=224, resize=256, mode=mode)(Image.fromarray(img))
    bright = (x[0] > 0).numpy()
    ys, xs = np.nonzero(bright)
    got = transform_boxes(box, (400, 300), mode, 224, 256)[0]
    assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], got, atol=1.5)


def test_interpolation_is_the_one_asked_for():
    """Bilinear stays the default (torchvision's); bicubic is what most timm models were
    evaluated with, and gives other pixels."""
    import torch
    from torchvision import transforms as T
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    for interp in ("bilinear", "bicubic"):
        mode = T.InterpolationMode(interp)
        want = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])(img)
        assert torch.equal(Preprocess(interpolation=interp)(img), want), interp
    assert not torch.equal(Preprocess()(img), Preprocess(interpolation="bicubic")(img))
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        Preprocess(interpolation="cubic")


def test_a_16_bit_png_reads_as_its_8_bit_version(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255 (a white image); the photo must come
    through as the 8-bit photo it stores."""
    from PIL import Image
    from chip_fast.data.preprocess import Preprocess
    g = np.random.default_rng(0)
    eight = g.integers(0, 256, (40, 48)).astype(np.uint8)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")      # PIL reads 16-bit PNGs as I;16 or I
        got = Preprocess(size=32, resize=32)(im)
    want = Preprocess(size=32, resize=32)(Image.fromarray(eight))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_float_images_in_0_1_are_scaled_not_clipped():
    from PIL import Image
    from chip_fast.data.preprocess import to_rgb
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    rgb = np.asarray(to_rgb(Image.fromarray(a)))
    assert rgb.shape == (8, 8, 3) and rgb.max() == 255 and rgb.min() == 0
