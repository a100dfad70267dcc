"""Bad input to the evaluation API (``chip_fast.evaluation.dataset`` and ``runner``): a missing
folder or a bad limit is refused by name, a photo that cannot be decoded is an ImageError naming
it, which ``evaluate`` skips (or raises, as asked), and settings that would divide by zero are
refused before any image is read."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from chip_fast.data.sources import ImageError
from chip_fast.evaluation.dataset import LocSample, load_val_dir
from chip_fast.evaluation.runner import EvalSettings, evaluate
from tests.evaluation.helpers import rect_map, write_csv


def _val(tmp_path, truncated: bool = False):
    from PIL import Image
    (tmp_path / "images").mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01 a\nn02 b\n")
    for k in range(2):
        pixels = np.random.default_rng(k).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(
            tmp_path / "images" / f"im{k}.JPEG")
    if truncated:
        data = (tmp_path / "images" / "im1.JPEG").read_bytes()
        (tmp_path / "images" / "im1.JPEG").write_bytes(data[:len(data) // 2])
    write_csv(tmp_path / "LOC_val_solution.csv", ["im0,n01 0 0 10 10", "im1,n02 0 0 10 10"])
    return tmp_path


def test_a_missing_folder_and_a_bad_limit_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"validation folder {tmp_path / 'nowhere'} does not exist")):
        load_val_dir(tmp_path / "nowhere")
    _val(tmp_path)
    for limit in (0, -1):
        with pytest.raises(ValueError, match=f"1 or more; got {limit}"):
            load_val_dir(tmp_path, limit=limit)
    assert len(load_val_dir(tmp_path, limit=1)) == 1


def test_a_truncated_photo_is_an_image_error_naming_it(tmp_path):
    ds = load_val_dir(_val(tmp_path, truncated=True))
    assert ds[0].image.shape == (3, 224, 224)
    with pytest.raises(ImageError, match=re.escape(f"cannot decode image {ds.image_paths[1]}: "
                                                   "image file is truncated")):
        ds[1]


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
        self.classifier = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class _Photos:
    """Five samples; those in ``bad`` cannot be decoded."""
    def __init__(self, bad):
        self.bad = set(bad)
        self.image_paths = [f"photo{i}.JPEG" for i in range(5)]

    def __len__(self):
        return 5

    def __getitem__(self, i):
        if i in self.bad:
            raise ImageError(f"cannot decode image photo{i}.JPEG: image file is truncated")
        return LocSample(f"photo{i}", torch.full((3, 16, 16), float(i)), i % 3,
                         np.array([[2, 2, 12, 12.]]))


def _oracle(model, images, classes):
    return np.stack([rect_map(16, 16, (2, 2, 12, 12))] * len(images))


def _run(tmp_path, bad, settings=None, **kw):
    lines = []
    torch.manual_seed(0)
    res = evaluate(_Toy().eval(), {"oracle": _oracle}, _Photos(bad), tmp_path / "out",
                   settings or EvalSettings(batch_size=2, faithfulness_limit=2,
                                            faithfulness_steps=2, sanity_limit=0),
                   plots=False, log=lines.append, **kw)
    return res, lines


def test_evaluate_skips_an_undecodable_photo_by_name(tmp_path):
    res, lines = _run(tmp_path, bad={1})
    assert "[evaluate] skipped: cannot decode image photo1.JPEG: image file is truncated" in lines
    assert res["n_images"] == 4 and res["image_ids"] == ["photo0", "photo2", "photo3", "photo4"]
    assert res["skipped_images"][0]["image"] == "photo1.JPEG"
    assert res["faithfulness_images"] == 2 and res["methods"]["oracle"]["pointing"] == 1.0
    assert "1 image(s) could not be decoded and were skipped: photo1.JPEG" in \
           (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ImageError, match="photo1.JPEG"):
        _run(tmp_path, bad={1}, on_error="raise")


def test_no_decodable_photo_is_a_result_that_says_so(tmp_path):
    res, lines = _run(tmp_path, bad=range(5))
    assert res["n_images"] == 0 and res["top1_acc"] is None
    assert res["methods"]["oracle"]["error"] == "no images"
    assert "5 of 5 image(s) could not be decoded" in lines[-1]
    assert "0 images, top-1 accuracy -;" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize("change,why", [
    (dict(batch_size=0), "batch_size must be a whole number, 1 or more; got 0"),
    (dict(faithfulness_steps=0), "faithfulness_steps must be a whole number, 1 or more"),
    (dict(faithfulness_limit=-1), "faithfulness_limit must be a whole number, 0 or more"),
    (dict(v2_step=0.0), "v2_step is a fraction of the map's maximum"),
    (dict(thresholds=[]), "thresholds is empty"),
])
def test_settings_that_cannot_work_are_refused_before_any_image(tmp_path, change, why):
    with pytest.raises(ValueError, match=why):
        _run(tmp_path, bad=(), settings=EvalSettings(**change))
    assert not (tmp_path / "out").exists()
