"""Bad input gives a clear error or a clear skip, never a crash deep inside."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import chip_fast
from chip_fast import (ImageError, ImageFolderSource, ImportanceFileError, LayerError,
                       Preprocess)
from tests.helpers import write_folder


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


def test_imagenet_folder_keeps_imagenet_indices(tmp_path):
    src = ImageFolderSource(write_folder(tmp_path / "train", ("n01443537", "n15075141")))
    assert src.classes == [1, 999]
    assert src.class_names[1] == "goldfish"


def test_corrupt_and_grayscale_images(tmp_path):
    root = write_folder(tmp_path / "train")
    bad = root / "n01440764" / "n01440764_0.JPEG"
    bad.write_bytes(b"this is not a jpeg")
    Image.fromarray(np.full((30, 50), 128, np.uint8), mode="L").save(root / "n01443537" / "gray.JPEG")
    src = ImageFolderSource(root, preprocess=Preprocess())
    with pytest.warns(UserWarning, match="n01440764_0.JPEG"):
        x = src.load(0, 0)  # falls over to the class's next image
    assert x.shape == (3, 224, 224) and src.skipped == [bad]
    gray = src.load(1, src.files[1].index(root / "n01443537" / "gray.JPEG"))
    assert gray.shape == (3, 224, 224)
    strict = ImageFolderSource(root, on_error="raise", preprocess=Preprocess())
    with pytest.raises(ImageError, match="n01440764_0.JPEG"):
        strict.load(0, 0)


def test_empty_class_folder_is_skipped_with_a_warning(tmp_path):
    root = write_folder(tmp_path / "train")
    (root / "n01484850").mkdir()
    with pytest.warns(UserWarning, match="n01484850"):
        src = ImageFolderSource(root)
    assert src.classes == [0, 1]
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folder holds an image"), pytest.warns(UserWarning):
        ImageFolderSource(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        ImageFolderSource(tmp_path / "nowhere")


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


def test_bad_tensor_sources():
    with pytest.raises(ValueError, match="labels"):
        chip_fast.TensorSource(torch.zeros(3, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        chip_fast.TensorSource(torch.full((1, 3, 8, 8), float("nan")), [0])


def test_model_changed_in_place_is_refused_again(tiny_net, tiny_data):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=8,
                                        progress=False)
    chip_fast.explain(tiny_net, imp, tiny_data[0][:2], [0, 1])  # checked and remembered
    with torch.no_grad():
        tiny_net.classifier.weight.add_(1.0)
    with pytest.raises(ImportanceFileError, match="weights differ"):
        chip_fast.explain(tiny_net, imp, tiny_data[0][:2], [0, 1])


def test_a_folder_source_is_read_with_the_models_own_preprocessing(tmp_path):
    """A source made without preprocess= takes the distilled model's: EfficientNet-Lite0 reads
    [-1, 1] inputs, never the ImageNet mean/std of another family; a direct read without one is
    refused with what to do."""
    from chip_fast.distill.job import DistillJob
    from chip_fast.models.efficientnet_lite import EfficientNetLite0, lite_preprocess
    root = write_folder(tmp_path / "train")
    src = ImageFolderSource(root)
    with pytest.raises(ValueError, match="no preprocessing to read the photos with"):
        src.load(src.classes[0], 0)
    job = DistillJob(EfficientNetLite0().eval(), src, ["features.8"],
                     chip_fast.DistillSettings(samples_per_class=8))
    assert job.source is src and src.preprocess == lite_preprocess()
    given = ImageFolderSource(root, preprocess=Preprocess(size=32))
    DistillJob(EfficientNetLite0().eval(), given, ["features.8"],
               chip_fast.DistillSettings(samples_per_class=8))
    assert given.preprocess == Preprocess(size=32)    # a preprocessing the user chose stays
