"""Weights files (``chip_fast.models.checkpoints``): a state_dict whose shapes differ from the
model's (a head fine-tuned to other classes) is one line naming the tensors and both shapes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chip_fast.models.checkpoints import load_strict
from tests.helpers import TinyNet


def test_a_head_for_other_classes_is_named_in_one_line():
    state = TinyNet(classes=10).state_dict()
    with pytest.raises(ValueError) as e:
        load_strict(TinyNet(classes=6), state, Path("ft.pth"), "TinyNet")
    msg = str(e.value)
    assert "\n" not in msg and "ft.pth does not fit TinyNet: 2 tensor(s) differ in shape" in msg
    assert "classifier.weight: file (10, 16), model (6, 16)" in msg
    assert "that many outputs" in msg
    model = load_strict(TinyNet(classes=10), state, Path("ft.pth"), "TinyNet")
    assert torch.equal(model.classifier.weight, state["classifier.weight"])
