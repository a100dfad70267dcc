"""ILSVRC localization annotations: reading the CSV and Pascal-VOC XML files.

Boxes are float arrays (N, 4) of ``x_min, y_min, x_max, y_max`` in the coordinates of the image
they belong to, as written in the ILSVRC files; ``chip_fast.data.preprocess`` moves them through the
model's preprocessing. The class order file is read by ``chip_fast.data.classes.read_mapping``.
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

class AnnotationError(ValueError):
    """Malformed annotation input; the message names the file (and line)."""


@dataclass
class ImageBoxes:
    """Ground truth of one image: its class, its boxes and the size the boxes refer to."""
    image_id: str
    wnid: str
    boxes: np.ndarray                      # (N, 4) float64, x_min y_min x_max y_max
    size: tuple[int, int] | None = None    # (width, height) the boxes refer to; None = unknown
    wnids: list[str] = field(default_factory=list)  # one per box


def read_loc_csv(path: str | Path) -> dict[str, ImageBoxes]:
    """``LOC_val_solution.csv``: ``ImageId,PredictionString`` with ``wnid x0 y0 x1 y1`` repeated."""
    path = Path(path)
    out: dict[str, ImageBoxes] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise AnnotationError(f"{path}:1: expected the header 'ImageId,PredictionString', "
                                  f"got {header!r}")
        for row in reader:
            lineno = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise AnnotationError(f"{path}:{lineno}: expected 2 fields, got {len(row)}")
            image_id, pred = row[0].strip(), row[1].split()
            if len(pred) == 0 or len(pred) % 5:
                raise AnnotationError(f"{path}:{lineno}: PredictionString must be 'wnid x_min "
                                      f"y_min x_max y_max' repeated; got {len(pred)} tokens")
            wnids = pred[0::5]
            try:
                coords = np.array([[float(v) for v in pred[i + 1:i + 5]]
                                   for i in range(0, len(pred), 5)], dtype=np.float64)
            except ValueError as e:
                raise AnnotationError(f"{path}:{lineno}: non-numeric box coordinate ({e})") from None
            _check_boxes(coords, f"{path}:{lineno}")
            if image_id in out:
                raise AnnotationError(f"{path}:{lineno}: image {image_id} listed twice")
            out[image_id] = ImageBoxes(image_id, wnids[0], coords, None, list(wnids))
    return out


def read_voc_xml(path: str | Path) -> ImageBoxes:
    """One Pascal-VOC-style XML of the ILSVRC release (size, object/name, object/bndbox)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: not well-formed XML ({e})") from None

    def number(node: ET.Element, tag: str, where: str) -> float:
        child = node.find(tag)
        if child is None or child.text is None:
            raise AnnotationError(f"{path}: missing <{tag}> in {where}")
        try:
            return float(child.text)
        except ValueError:
            raise AnnotationError(f"{path}: <{tag}> in {where} is not a number: "
                                  f"{child.text!r}") from None

    size_node = root.find("size")
    size = None
    if size_node is not None:
        size = (int(number(size_node, "width", "<size>")), int(number(size_node, "height", "<size>")))
    fname = root.findtext("filename")
    image_id = Path(fname.strip()).stem if fname and fname.strip() else path.stem
    wnids, boxes = [], []
    for k, obj in enumerate(root.findall("object")):
        name = obj.findtext("name")
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise AnnotationError(f"{path}: <object> #{k} lacks <name> or <bndbox>")
        wnids.append(name.strip())
        boxes.append([number(bb, t, f"<object> #{k}") for t in ("xmin", "ymin", "xmax", "ymax")])
    if not boxes:
        raise AnnotationError(f"{path}: no <object> with a <bndbox>")
    arr = np.asarray(boxes, dtype=np.float64)
    _check_boxes(arr, str(path))
    return ImageBoxes(image_id, wnids[0], arr, size, wnids)


def read_xml_dir(folder: str | Path) -> dict[str, ImageBoxes]:
    """Every ``*.xml`` of a folder, keyed by image id (the file name without suffix)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder}: no .xml annotation files")
    return {p.stem: read_voc_xml(p) for p in files}


def _check_boxes(boxes: np.ndarray, where: str) -> None:
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]) | (boxes < 0).any(1)
    if bad.any():
        raise AnnotationError(f"{where}: box {boxes[bad][0].tolist()} has x_max < x_min, "
                              f"y_max < y_min or a negative coordinate")
