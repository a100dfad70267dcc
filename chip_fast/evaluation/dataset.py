"""A localization evaluation set: preprocessed photos with their class and boxes in input pixels.

Owns pairing photos with their annotations; the geometry that moves boxes with the pixels is
``chip_fast.data.preprocess``'s, reading the annotation files ``annotations``'."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.classes import read_mapping
from ..data.preprocess import Preprocess
from ..data.sources import IMAGE_SUFFIXES, open_photo
from .annotations import AnnotationError, ImageBoxes, read_loc_csv, read_xml_dir


@dataclass
class LocSample:
    image_id: str
    image: torch.Tensor      # (3, S, S) normalised model input
    label: int               # ground-truth class index
    boxes: np.ndarray        # (N, 4) ground-truth boxes in input pixels (x0, y0, x1, y1)


# The pre-scaled 227x227 val photos are resized, not cropped, by default: a crop would cut boxes.
DEFAULT_PREPROCESS = Preprocess(mode="resize")


class LocDataset(torch.utils.data.Dataset):
    """Photos + ground truth; images load lazily, boxes follow the preprocessing."""

    def __init__(self, image_paths: list[Path], truth: list[ImageBoxes], labels: list[int],
                 preprocess: Preprocess = DEFAULT_PREPROCESS) -> None:
        self.image_paths, self.truth, self.labels = image_paths, truth, labels
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> LocSample:
        """Photo ``i`` with its boxes; a file that cannot be decoded is an ImageError naming it
        (the evaluation skips it, or stops, as asked)."""
        path, gt = self.image_paths[i], self.truth[i]
        with open_photo(path) as img:
            boxes = gt.boxes
            if gt.size is not None and tuple(gt.size) != img.size:
                # XML of the original release with a re-scaled photo: boxes follow the photo.
                boxes = boxes * np.array([img.size[0] / gt.size[0], img.size[1] / gt.size[1]] * 2)
            boxes = self.preprocess.boxes(boxes, img.size)
            x = self.preprocess(img)
        return LocSample(gt.image_id, x, self.labels[i], boxes)


def _names(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def load_val_dir(val_dir: str | Path, *, xml_dir: str | Path | None = None,
                 synsets: str | Path | None = None, limit: int | None = None,
                 preprocess: Preprocess = DEFAULT_PREPROCESS) -> LocDataset:
    """A folder with ``images/`` and either ``LOC_val_solution.csv`` or per-image XML files
    (``xml_dir``, else ``val_dir/xml`` or ``val_dir/Annotations``), plus ``LOC_synset_mapping.txt``.

    Images are taken in sorted file-name order; the first ``limit`` annotated ones are kept.
    ``preprocess`` (default: a 224x224 resize with the ImageNet normalisation) makes the model
    inputs, and the boxes follow its geometry. Annotations without an image and images without
    an annotation are left out with a warning that counts them (and names a few).
    """
    val_dir = Path(val_dir)
    if not val_dir.is_dir():
        raise FileNotFoundError(f"validation folder {val_dir} does not exist" if not
                                val_dir.exists() else f"{val_dir} is a file, not a validation "
                                "folder (images/, LOC_val_solution.csv, LOC_synset_mapping.txt)")
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit is the number of images to keep, 1 or more; got {limit!r}")
    img_dir = val_dir / "images" if (val_dir / "images").is_dir() else val_dir
    synsets = Path(synsets) if synsets else val_dir / "LOC_synset_mapping.txt"
    if not synsets.is_file():
        raise FileNotFoundError(f"{synsets}: class order file (LOC_synset_mapping.txt) not found")
    index = {w: i for i, w in enumerate(read_mapping(synsets)[0])}
    csv_path = val_dir / "LOC_val_solution.csv"
    if xml_dir is None and csv_path.is_file():
        truth = read_loc_csv(csv_path)
        source = csv_path
    else:
        if xml_dir is None:
            xml_dir = next((val_dir / d for d in ("xml", "Annotations", "annotations")
                            if (val_dir / d).is_dir()), None)
            if xml_dir is None:
                raise FileNotFoundError(f"{val_dir}: neither LOC_val_solution.csv nor an XML "
                                        f"folder (xml/ or Annotations/)")
        truth = read_xml_dir(xml_dir)
        source = Path(xml_dir)
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    _warn_unpaired(images, truth, img_dir, source)
    paths, gts, labels = [], [], []
    for p in images:
        if p.stem not in truth:
            continue
        gt = truth[p.stem]
        if gt.wnid not in index:
            raise AnnotationError(f"{source}: image {p.stem} has class {gt.wnid}, which is not "
                                  f"in {synsets}")
        paths.append(p)
        gts.append(gt)
        labels.append(index[gt.wnid])
        if limit is not None and len(paths) >= limit:
            break
    if not paths:
        raise FileNotFoundError(f"{img_dir}: no images with annotations in {source}")
    return LocDataset(paths, gts, labels, preprocess)


def _warn_unpaired(images: list[Path], truth: dict, img_dir: Path, source: Path) -> None:
    """Say how many annotations have no image and how many images no annotation (both are
    left out of the evaluation), naming a few of each."""
    stems = {p.stem for p in images}
    no_image = sorted(set(truth) - stems)
    no_truth = [p.name for p in images if p.stem not in truth]
    if no_image:
        warnings.warn(f"{len(no_image)} of the {len(truth)} annotated images of {source} are not "
                      f"in {img_dir} and are left out: {_names(no_image)}", stacklevel=3)
    if no_truth:
        warnings.warn(f"{len(no_truth)} of the {len(images)} images in {img_dir} have no "
                      f"annotation in {source} and are left out: {_names(no_truth)}",
                      stacklevel=3)
