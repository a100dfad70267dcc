"""ILSVRC localization annotations: CSV / Pascal-VOC XML reading and boxes through preprocessing.

Boxes are float arrays (N, 4) of ``x_min, y_min, x_max, y_max`` in the coordinates of the image
they belong to, as written in the ILSVRC files; preprocessing scales them as continuous
coordinates (the metrics treat them so, see metrics.py).
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


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


def read_synset_mapping(path: str | Path) -> tuple[list[str], dict[str, int]]:
    """``LOC_synset_mapping.txt``: line i is ``wnid name...`` of class i."""
    path = Path(path)
    wnids: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split(maxsplit=1)
            if not parts:
                raise AnnotationError(f"{path}:{lineno}: empty line in a synset mapping")
            if not parts[0].startswith("n"):
                raise AnnotationError(f"{path}:{lineno}: expected a WordNet id like n01440764, "
                                      f"got {parts[0]!r}")
            wnids.append(parts[0])
    index = {w: i for i, w in enumerate(wnids)}
    if len(index) != len(wnids):
        raise AnnotationError(f"{path}: duplicate WordNet ids")
    return wnids, index


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


# --- boxes through preprocessing ---------------------------------------------------------------

def rescale_boxes(boxes: np.ndarray, src_size: tuple[int, int],
                  dst_size: tuple[int, int]) -> np.ndarray:
    """Boxes of an image of ``src_size`` (w, h) after resizing it to ``dst_size`` (w, h)."""
    sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return boxes * np.array([sx, sy, sx, sy])


def resize_short_side_size(size: tuple[int, int], short: int) -> tuple[int, int]:
    """(w, h) after torchvision's ``Resize(short)``: the long side is truncated, as torchvision does."""
    w, h = size
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def center_crop_offset(size: tuple[int, int], crop: int) -> tuple[int, int]:
    """(left, top) of torchvision's ``CenterCrop(crop)`` in an image of ``size`` (w, h)."""
    w, h = size
    return int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))


def crop_boxes(boxes: np.ndarray, offset: tuple[int, int], crop_size: tuple[int, int]) -> np.ndarray:
    """Boxes after cropping at ``offset`` (left, top) to ``crop_size`` (w, h): shifted, clipped to
    the crop; boxes left with no area inside the crop are dropped (they are not in the input)."""
    left, top = offset
    out = boxes - np.array([left, top, left, top], dtype=np.float64)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, crop_size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, crop_size[1])
    out = out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]
    return out


def transform_boxes(boxes: np.ndarray, image_size: tuple[int, int], mode: str = "resize",
                    size: int = 224, resize_short: int = 256) -> np.ndarray:
    """Boxes of an image of ``image_size`` (w, h) through the model's preprocessing.

    mode ``"resize"``: resize straight to size x size (aspect not kept, as for the pre-scaled
    227x227 photos); ``"center_crop"``: resize the short side to ``resize_short``, then crop the
    central size x size (boxes cut by the crop are clipped, boxes outside it dropped).
    """
    if mode == "resize":
        return rescale_boxes(boxes, image_size, (size, size))
    if mode == "center_crop":
        mid = resize_short_side_size(image_size, resize_short)
        return crop_boxes(rescale_boxes(boxes, image_size, mid),
                          center_crop_offset(mid, size), (size, size))
    raise ValueError(f"unknown preprocessing mode {mode!r}; use 'resize' or 'center_crop'")
