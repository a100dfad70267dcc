"""Bad input through the API (distill, explain, load an importance file) gives a clear error,
never a crash deep inside. (Bad photo folders and tensors: tests/data/test_sources.py.)"""
import json

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast import ImportanceFileError, LayerError


def test_wrong_layer_lists_valid_names(tiny_net, tiny_data):
    with pytest.raises(LayerError) as e:
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.7"], progress=False)
    assert "features.1" in str(e.value) and "classifier" in str(e.value)


def test_hooks_are_removed_after_an_error(tiny_net, tiny_data, tmp_path):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                        progress=False)
    with pytest.raises(ValueError, match="images"):
        chip_fast.explain(tiny_net, imp, tiny_data[0][:3], [0, 1])
    assert all(not m._forward_hooks for m in tiny_net.modules())


def test_importance_from_another_model_is_refused(tiny_net, tiny_data, tmp_path):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                        progress=False)
    path = imp.save(tmp_path / "tiny.chip")
    loaded = chip_fast.load_importance(path)
    from tests.helpers import TinyNet
    other = TinyNet().eval()  # same architecture, other weights
    with pytest.raises(ImportanceFileError, match="weights differ"):
        chip_fast.explain(other, loaded, tiny_data[0][:2], [0, 1])
    wider = TinyNet(width=4).eval()
    with pytest.raises(ImportanceFileError, match="shape"):
        chip_fast.explain(wider, loaded, tiny_data[0][:2], [0, 1])


def test_malformed_importance_files_are_refused(tiny_net, tiny_data, tmp_path):
    junk = tmp_path / "junk.chip"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ImportanceFileError, match="not a safetensors file"):
        chip_fast.load_importance(junk)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.chip"
    save_file({"x": torch.zeros(2)}, plain)
    with pytest.raises(ImportanceFileError, match="no 'chip_fast' metadata"):
        chip_fast.load_importance(plain)
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                        progress=False)
    meta = imp.metadata()
    meta["channels"]["features.2"] = 99
    wrong = tmp_path / "wrong.chip"
    save_file({"weights/features.2": imp.weights["features.2"]}, wrong,
              metadata={"chip_fast": json.dumps(meta)})
    with pytest.raises(ImportanceFileError, match="shape"):
        chip_fast.load_importance(wrong)
    meta["version"] = 99
    save_file({"weights/features.2": imp.weights["features.2"]}, wrong,
              metadata={"chip_fast": json.dumps(meta)})
    with pytest.raises(ImportanceFileError, match="version 99"):
        chip_fast.load_importance(wrong)


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3))) * float("nan")


def test_nan_logits_stop_with_a_clear_error(tiny_data):
    images, labels = tiny_data
    with pytest.raises(FloatingPointError, match="NaN"):
        chip_fast.distill_all_classes(NaNNet().eval(), (images, labels % 3), ["body"],
                                      progress=False)


def test_model_changed_in_place_is_refused_again(tiny_net, tiny_data):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                        progress=False)
    chip_fast.explain(tiny_net, imp, tiny_data[0][:2], [0, 1])  # checked and remembered
    with torch.no_grad():
        tiny_net.classifier.weight.add_(1.0)
    with pytest.raises(ImportanceFileError, match="weights differ"):
        chip_fast.explain(tiny_net, imp, tiny_data[0][:2], [0, 1])




class Tokens(nn.Module):
    """A patch embedding, then (N, T, C) tokens through a block, as a ViT is laid out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)          # (N, T, C)
        return self.head(self.block(t).mean(1))


@pytest.mark.filterwarnings("ignore:samples_per_class")
def test_a_token_layer_given_by_hand_is_read_as_channels_over_the_grid():
    """(N, T, C) tokens used to be refused here (their dimension 1 would have been read as
    channels); now they are C channels over the patch grid (chip_fast.models.layouts)."""
    model, data = Tokens().eval(), (torch.randn(6, 3, 8, 8), torch.arange(6) % 3)
    imp = chip_fast.distill_all_classes(model, data, ["block"], samples_per_class=16,
                                        progress=False)
    assert imp.weights["block"].shape == (3, 8)       # 8 channels, not 4 tokens
    assert chip_fast.explain(model, imp, data[0][:2], [0, 1]).shape == (2, 8, 8)
