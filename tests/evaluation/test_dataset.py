"""A localization evaluation set (``chip_fast.evaluation.dataset``): photos paired with their
class and boxes from the CSV or the XML files, the boxes moved with the pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chip_fast.data.preprocess import Preprocess
from chip_fast.evaluation.annotations import AnnotationError
from chip_fast.evaluation.dataset import load_val_dir
from tests.evaluation.helpers import VOC, write_csv


def test_load_val_dir_csv_and_xml(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "xml").mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01 a\nn02 b\n")
    for k, wnid in enumerate(["n02", "n01"]):
        Image.fromarray(np.full((200, 100, 3), 128, np.uint8)).save(
            tmp_path / "images" / f"im{k}.JPEG")
        # the XML refers to the original 400 x 200 photo: boxes follow the stored 100 x 200 one
        (tmp_path / "xml" / f"im{k}.xml").write_text(VOC.format(
            name=f"im{k}", w=400, h=200, wnid=wnid, x0=0, y0=0, x1=200, y1=100))
    ds = load_val_dir(tmp_path, preprocess=Preprocess(size=64, mode="resize"))
    assert len(ds) == 2 and ds.labels == [1, 0]
    s = ds[0]
    assert s.image.shape == (3, 64, 64) and np.allclose(s.boxes, [[0, 0, 32, 32]])
    write_csv(tmp_path / "LOC_val_solution.csv", ["im1,n02 0 0 50 100", "im0,n03 0 0 1 1"])
    with pytest.raises(AnnotationError, match="n03"):
        load_val_dir(tmp_path)
    ds = load_val_dir(tmp_path, xml_dir=tmp_path / "xml", limit=1)
    assert len(ds) == 1
