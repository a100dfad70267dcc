"""Which classes a distillation takes: indices, or the data's own wnids and class names, and an
error that shows what the data has when a request matches nothing."""
from __future__ import annotations

import pytest
import torch
import torchvision

import chip_fast
from chip_fast.distill.inputs import select_classes

from ..helpers import cli_error, write_folder

IDS = ["n01440764", "n01443537", "n01484850"]
NAMES = ["tench", "goldfish", "great white shark"]


def test_indices_wnids_and_names_resolve_to_indices():
    assert select_classes([0, 1, 2], None) == [0, 1, 2]
    assert select_classes([0, 1, 2], ["n01443537", 0], IDS, NAMES) == [0, 1]
    assert select_classes([0, 1, 2], ["Great White Shark", "2", "tench"], IDS, NAMES) == [0, 2]
    assert select_classes([0, 1, 2], "goldfish", IDS, NAMES) == [1]   # one class alone


def test_unknown_names_and_missing_classes_say_what_the_data_has():
    with pytest.raises(ValueError, match=r"'tabby' is neither .* named like 'n01440764'"):
        select_classes([0, 1], ["tabby"], IDS, NAMES)
    with pytest.raises(ValueError, match="names no classes"):
        select_classes([0, 1], ["tench"])
    with pytest.raises(ValueError, match=r"\[2\] have no images .* e\.g\. 0 \(n01440764\)"):
        select_classes([0, 1], ["great white shark"], IDS, NAMES)
    with pytest.raises(ValueError, match="names classes \\[0, 1\\]"):
        select_classes([0, 1], ["fish"], ["a", "b"], ["fish", "fish"])
    with pytest.raises(TypeError, match="index, a wnid or a class name"):
        select_classes([0, 1], [1.5])
    # an index past the data's class table does not exist, as explain says of the model's
    with pytest.raises(ValueError, match=r"class 5000 does not exist: the data's class table "
                                         r"has 3 classes \(0-2\)"):
        select_classes([0, 1], [5000], IDS, NAMES)


def test_a_folder_is_distilled_by_wnid_and_on_the_command_line(tiny_net, tmp_path, capsys):
    root = write_folder(tmp_path / "train")
    imp = chip_fast.distill_all_classes(tiny_net, root, ["features.2"], classes=["n01443537"],
                                        samples_per_class=8, progress=False)
    assert imp.classes == [1]
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "random.pth")
    err = cli_error(["distill", "--arch", "mobilenet_v2", "--weights", str(tmp_path / "random.pth"),
                     "--data", str(root), "--classes", "n01443537,tabby,no such class",
                     "--out", str(tmp_path / "x.chip")], capsys)
    assert "'no such class' is neither an index nor a wnid or name" in err
