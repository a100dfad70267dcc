import numpy as np
import torch
from PIL import Image

from chip_fast.data.sources import ImageFolderSource, Preprocess, make_view, load_image


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
