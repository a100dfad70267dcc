"""Class orders and names (``chip_fast.data.classes``): the ``LOC_synset_mapping.txt`` format."""
from __future__ import annotations

import pytest

from chip_fast.data.classes import read_mapping


def test_synset_mapping(tmp_path):
    p = tmp_path / "syn.txt"
    p.write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    assert read_mapping(p) == (["n01", "n02"], ["tench, Tinca tinca", "goldfish"])
    p.write_text("n01 tench\n\nn02 goldfish\n")
    with pytest.raises(ValueError, match=r"syn\.txt:2"):
        read_mapping(p)
