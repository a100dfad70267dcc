"""What an ``Importance`` refuses and how it shows itself: ``chip_fast.top_channels``
naming a bad layer (with the layers held), a class the model lacks, one never distilled
(ClassNotDistilledError, as ``explain`` raises, with the classes held) and a bad count;
``load_importance`` of a folder; and a ``repr`` of one short line instead of every tensor."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast import ClassNotDistilledError
from chip_fast.atlas.collect import top_channels
from chip_fast.importance.core import ClassNotDistilledError as CoreError
from tests.helpers import TinyNet

LAYERS = ["features.1", "features.2"]


@pytest.fixture(scope="module")
def imp() -> chip_fast.Importance:
    """Classes 0, 1 and 2 of 6 at two layers."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 6)
    return chip_fast.distill_all_classes(net, data, LAYERS, classes=[0, 1, 2],
                                         samples_per_class=64, progress=False)


def test_one_exception_class_for_classes_not_distilled():
    assert ClassNotDistilledError is CoreError and issubclass(CoreError, ValueError)


def test_top_channels_takes_a_class_as_any_integer(imp):
    assert top_channels(imp, "features.2", torch.tensor(1), 3) == top_channels(
        imp, "features.2", 1, 3)


def test_top_channels_of_a_layer_not_held_lists_the_layers(imp):
    with pytest.raises(ValueError, match=r"layers \['features\.9'\] were not distilled; the "
                                         r"file holds \['features\.1', 'features\.2'\]"):
        top_channels(imp, "features.9", 0)
    with pytest.raises(TypeError, match=r"layer name \(str\), got 2"):
        top_channels(imp, 2, 0)


def test_top_channels_of_a_class_the_model_lacks_says_how_many_it_has(imp):
    with pytest.raises(ValueError, match=r"class 5000 does not exist: the model has 6 classes "
                                         r"\(0-5\)"):
        top_channels(imp, "features.2", 5000)
    with pytest.raises(ValueError, match="class -1 does not exist"):
        top_channels(imp, "features.2", -1)
    with pytest.raises(TypeError, match=r"class must be an integer, got 1\.5"):
        top_channels(imp, "features.2", 1.5)


def test_top_channels_of_a_class_not_distilled_names_those_that_were(imp):
    with pytest.raises(ClassNotDistilledError, match=r"classes 4 are not distilled .*holds 3 of "
                                                     r"6 classes: 0, 1, 2") as e:
        top_channels(imp, "features.2", 4)
    assert e.value.classes == [4] and e.value.rows == {}


@pytest.mark.parametrize("n", [-1, 0])
def test_top_channels_refuses_a_count_below_one(imp, n):
    with pytest.raises(ValueError, match=rf"n={n}: the number of channels to show must be 1"):
        top_channels(imp, "features.2", 0, n)


def test_require_takes_one_layer_or_one_class(imp):
    imp.require(layers="features.2", classes=1)
    with pytest.raises(ValueError, match=r"layers \['nope'\] were not distilled"):
        imp.require(layers="nope")
    with pytest.raises(ClassNotDistilledError, match="classes 5 are not distilled"):
        imp.require(classes=5)


def test_loading_a_folder_says_it_is_a_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(IsADirectoryError, match=r"photos is a folder, not an importance file"):
        chip_fast.load_importance(tmp_path / "photos")
    with pytest.raises(FileNotFoundError, match="m.chip does not exist"):
        chip_fast.load_importance(tmp_path / "m.chip")
    with pytest.raises(TypeError, match="path of an importance file.*got int"):
        chip_fast.load_importance(3)


def test_repr_is_one_short_line_naming_the_layers(imp, tmp_path):
    loaded = chip_fast.load_importance(imp.save(tmp_path / "tiny.chip"))
    for one in (imp, loaded):
        text = repr(one)
        assert len(text) < 300 and "\n" not in text and "tensor(" not in text
        assert str(one) == text
        assert "features.1 (6x16" in text and "features.2 (6x16" in text
        assert "3 of 6 classes distilled" in text and "samples_per_class 64" in text
        assert f"TinyNet sha256 {one.fingerprint['sha256'][:12]}" in text
