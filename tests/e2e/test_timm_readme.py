"""The README's timm commands run as written: ``chip-fast distill`` then ``chip-fast explain``
with ``--arch timm:resnet18`` and a checkpoint file, offline. The checkpoint is a random-weight
resnet18 with a 10-class head saved by the test; the data a tiny folder of two wnid classes; the
one change to the commands is a smaller ``--samples-per-class`` (two CPU cores)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chip_fast.cli import main
from chip_fast.importance.core import load_importance
from tests.helpers import write_folder

timm = pytest.importorskip("timm", reason="timm models need: pip install 'chip-fast[timm]'")
README = Path(__file__).resolve().parents[2] / "README.md"


def _timm_commands() -> list[list[str]]:
    section = README.read_text().split("### timm models", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("chip-fast ")]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:samples_per_class")   # 16 samples: the mechanics
def test_readme_timm_distill_then_explain(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(model.state_dict(), "r18.pth")
    write_folder(tmp_path / "train", per_class=1)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save("photo.jpg")

    distill, explain = _timm_commands()
    assert distill[:5] == ["distill", "--arch", "timm:resnet18", "--weights", "r18.pth"]
    n = distill.index("--samples-per-class") + 1
    distill[n] = "16"
    assert main(distill + ["--device", "cpu"]) == 0
    imp = load_importance("r18.chip")
    assert imp.num_classes == 10 and imp.classes == [0, 1]
    assert imp.layers == ["layer3.1", "layer4.1"]
    for layer in imp.layers:
        assert imp.weights[layer][[0, 1]].abs().sum() > 0, layer

    assert main(explain + ["--device", "cpu"]) == 0
    out = tmp_path / "r18_maps"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 1 and re.fullmatch(r"photo_class[01]\.png", pngs[0]), pngs
    raw = np.load(next(out.glob("*.npy")))
    assert raw.ndim == 2 and raw.max() - raw.min() > 0.1     # a map, not a constant
    assert (out / "index.html").is_file()


@pytest.mark.slow   # ~30 s: a ViT-Tiny distillation of two classes, 1,024 samples each
def test_readme_transformer_example(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("### Transformers", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "['blocks.11.mlp.act']" in printed and "torch.Size([10, 768])" in printed
    maps = namespace["maps"]
    assert maps.shape == (2, 224, 224)
    assert (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) > 0.1).all()
