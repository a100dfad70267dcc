"""Distillation images (``chip_fast.data.sources``): photo folders (ImageNet indices kept, a
mapping file's order, corrupt, grayscale and empty inputs), in-memory tensors, decoding, and
the keyed views made of each image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import chip_fast
from chip_fast.data.sources import (ImageError, ImageFolderSource, Preprocess, load_image,
                                    make_view)
from tests.helpers import write_folder


def test_torchvision_decoding_matches_pil(tmp_path):
    rng = np.random.default_rng(0)
    arr = (rng.random((300, 410, 3)) * 255).astype(np.uint8)
    path = tmp_path / "x.JPEG"
    Image.fromarray(arr).save(path, quality=95)
    pil = load_image(path, Preprocess())
    tv = load_image(path, Preprocess(), decode_device="cpu")  # the nvJPEG path, on the CPU
    assert pil.shape == tv.shape == (3, 224, 224)
    # Resampling differs slightly between PIL and tensor resize; the photo is the same.
    assert (pil - tv).abs().mean() < 0.05


def test_views_are_keyed_and_shaped():
    image = torch.randn(3, 32, 32)
    assert torch.equal(make_view(image, 5, 0, 1, 0), image)
    assert torch.equal(make_view(image, 5, 1, 1, 0), image.flip(-1))
    a, b = make_view(image, 5, 2, 1, 0), make_view(image, 5, 2, 1, 0)
    assert torch.equal(a, b) and a.shape == image.shape
    assert not torch.equal(a, make_view(image, 6, 2, 1, 0))


def test_mapping_file_orders_classes(tmp_path):
    for w in ("b_class", "a_class"):
        (tmp_path / "train" / w).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / w / "1.png")
    (tmp_path / "map.txt").write_text("b_class bee\na_class ant\n")
    src = ImageFolderSource(tmp_path / "train", mapping_file=tmp_path / "map.txt")
    assert src.classes == [0, 1] and src.class_names == ["bee", "ant"]
    sorted_src = ImageFolderSource(tmp_path / "train")  # not wnids: ImageFolder's sorted order
    assert sorted_src.class_ids == ["a_class", "b_class"]


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


def test_bad_tensor_sources():
    with pytest.raises(ValueError, match="labels"):
        chip_fast.TensorSource(torch.zeros(3, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        chip_fast.TensorSource(torch.full((1, 3, 8, 8), float("nan")), [0])


@pytest.mark.parametrize("outputs,warns", [(5, True), (2, False)])
def test_folders_in_sorted_order_warn_when_the_model_cannot_have_that_order(tmp_path, outputs,
                                                                            warns):
    """Non-wnid folders are numbered 0..N-1 (ImageFolder's rule): right for a model with one
    output per folder, a silent wrong class for any other (an ImageNet model's 0 is tench)."""
    import warnings
    from tests.helpers import TinyNet
    write_folder(tmp_path, wnids=("dog", "fish"), per_class=1, size=16)
    source = ImageFolderSource(tmp_path, preprocess=Preprocess(size=16, resize=16))
    assert source.sorted_order == ["dog", "fish"]
    model = TinyNet(classes=outputs).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chip_fast.distill_all_classes(model, source, ["features.2"], samples_per_class=16,
                                      progress=False)
    said = [str(w.message) for w in caught if "not ImageNet wnids" in str(w.message)]
    assert bool(said) == warns, said
    if warns:
        assert "'dog', 'fish'" in said[0] and f"{outputs} outputs" in said[0]
        assert "mapping_file" in said[0]
