"""The demo (``chip_fast.demo``): its overlay and its report writer on small fake inputs. (The
real run end to end: tests/e2e/test_demo.py.)"""
from __future__ import annotations

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


