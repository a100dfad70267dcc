"""Overlays at the photo's own size (``chip_fast.report.overlay``): the map goes back through the
preprocessing geometry (the inverse of what ``Preprocess.boxes`` does forward), the uncovered part
is dimmed, and the legend is drawn on the picture."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chip_fast.report.overlay import DIM, heat_on_photo, input_region, overlay_on_photo
from chip_fast.data.preprocess import Preprocess


@pytest.mark.parametrize("size", [(341, 256), (256, 382), (224, 224), (1000, 300)])
@pytest.mark.parametrize("mode", ["center_crop", "resize"])
def test_input_region_is_what_the_model_input_shows(size, mode):
    prep = Preprocess(mode=mode)
    region = np.array([input_region(prep, size)])
    # the region, sent forward through the preprocessing, is exactly the whole input
    assert np.allclose(prep.boxes(region, size), [[0, 0, 224, 224]], atol=1e-6)


def test_map_lands_on_the_crop_and_nowhere_else():
    prep = Preprocess()
    heat = np.zeros((224, 224), np.float32)
    heat[:, 112:] = 1.0                       # right half of the input
    full = heat_on_photo(heat, (341, 256), input_region(prep, (341, 256)))
    x0, y0, x1, y1 = input_region(prep, (341, 256))
    assert full.shape == (256, 341)
    assert (x0, y0, x1, y1) == (58, 16, 282, 240)   # resize to 341x256, centre 224 crop
    assert np.isnan(full[:, :58]).all() and np.isnan(full[:, 282:]).all()
    assert np.isnan(full[:16]).all() and np.isnan(full[240:]).all()
    assert not np.isnan(full[16:240, 58:282]).any()
    middle = (x0 + x1) / 2
    assert full[128, int(middle) + 5] == pytest.approx(1.0) and full[128, int(middle) - 5] == 0


def test_overlay_keeps_the_photo_size_dims_the_rest_and_draws_the_legend():
    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 200, (256, 341, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    heat = np.zeros((224, 224), np.float32)
    out = overlay_on_photo(photo, heat, Preprocess(), "tabby (281)")
    assert out.size == photo.size
    arr = np.asarray(out).astype(float)
    # left of the crop, above the legend: the photo dimmed, no colour
    assert np.allclose(arr[50, :40], pixels[50, :40] * DIM, atol=1.0)
    # the legend band at the bottom carries the colour bar: its right end is the colour of 1
    bar = arr[-12, -60:]
    assert bar[:, 0].max() > 150 and bar[:, 2].min() < 80
    plain = overlay_on_photo(photo, heat, Preprocess())
    assert plain.size == photo.size   # without a label: no band, the bottom rows differ
    assert not np.array_equal(np.asarray(plain)[-10:], arr[-10:].astype(np.uint8))


def test_large_photos_are_shrunk_to_max_side_keeping_the_aspect():
    photo = Image.new("RGB", (4000, 1000), (90, 90, 90))
    out = overlay_on_photo(photo, np.ones((224, 224), np.float32), Preprocess(), "x",
                           max_side=1000)
    assert out.size == (1000, 250)
    assert overlay_on_photo(photo.resize((400, 100)), np.ones((224, 224)), Preprocess(),
                            max_side=0).size == (400, 100)
