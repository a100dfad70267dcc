"""ILSVRC localization annotations (``chip_fast.evaluation.annotations``): the CSV and the
Pascal-VOC XML files read, and malformed ones refused naming the file and line."""
from __future__ import annotations

import pytest

from chip_fast.evaluation.annotations import AnnotationError, read_loc_csv, read_voc_xml
from tests.evaluation.helpers import VOC, write_csv


def test_read_loc_csv(tmp_path):
    p = write_csv(tmp_path / "loc.csv", ["img_a,n01 1 2 30 40 n01 5 6 7 8 ", "img_b,n02 0 0 10 10"])
    gt = read_loc_csv(p)
    assert gt["img_a"].wnid == "n01" and gt["img_a"].boxes.tolist() == [[1, 2, 30, 40], [5, 6, 7, 8]]
    assert gt["img_b"].boxes.shape == (1, 4)
    bad = write_csv(tmp_path / "bad.csv", ["img_a,n01 1 2 30 40", "img_b,n02 0 0 10"])
    with pytest.raises(AnnotationError, match=r"bad\.csv:3"):
        read_loc_csv(bad)
    with pytest.raises(AnnotationError, match=r"nan\.csv:2: non-numeric"):
        read_loc_csv(write_csv(tmp_path / "nan.csv", ["img_a,n01 1 2 x 40"]))
    with pytest.raises(AnnotationError, match="x_max < x_min"):
        read_loc_csv(write_csv(tmp_path / "inv.csv", ["img_a,n01 30 2 1 40"]))
    (tmp_path / "hdr.csv").write_text("a,b\n")
    with pytest.raises(AnnotationError, match=r"hdr\.csv:1"):
        read_loc_csv(tmp_path / "hdr.csv")


def test_read_voc_xml(tmp_path):
    p = tmp_path / "ILSVRC2012_val_00000001.xml"
    p.write_text(VOC.format(name="ILSVRC2012_val_00000001", w=500, h=375, wnid="n01751748",
                            x0=111, y0=108, x1=441, y1=332))
    gt = read_voc_xml(p)
    assert (gt.image_id, gt.wnid, gt.size) == ("ILSVRC2012_val_00000001", "n01751748", (500, 375))
    assert gt.boxes.tolist() == [[111, 108, 441, 332]]
    p.write_text("<annotation><size><width>5</width><height>5</height></size>"
                 "<object><name>n01</name></object></annotation>")
    with pytest.raises(AnnotationError, match="ILSVRC2012_val_00000001.xml"):
        read_voc_xml(p)
    p.write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="not well-formed"):
        read_voc_xml(p)
