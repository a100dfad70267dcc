"""A localization evaluation set: preprocessed photos with their class and boxes in input pixels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .annotations import (IMAGE_SUFFIXES, AnnotationError, ImageBoxes, center_crop_offset,
                          read_loc_csv, read_synset_mapping, read_xml_dir,
                          resize_short_side_size, transform_boxes)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LocSample:
    image_id: str
    image: torch.Tensor      # (3, S, S) normalised model input
    label: int               # ground-truth class index
    boxes: np.ndarray        # (N, 4) ground-truth boxes in input pixels (x0, y0, x1, y1)


def preprocess(img: Image.Image, mode: str = "resize", size: int = 224, resize_short: int = 256,
               mean: tuple[float, ...] = IMAGENET_MEAN,
               std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """PIL image -> normalised (3, size, size) tensor, mirroring ``transform_boxes``."""
    import torchvision.transforms.functional as TF
    img = img.convert("RGB")
    if mode == "resize":
        img = TF.resize(img, [size, size])
    elif mode == "center_crop":
        w, h = resize_short_side_size(img.size, resize_short)
        img = TF.resize(img, [h, w])
        left, top = center_crop_offset((w, h), size)
        img = TF.crop(img, top, left, size, size)
    else:
        raise ValueError(f"unknown preprocessing mode {mode!r}; use 'resize' or 'center_crop'")
    return TF.normalize(TF.to_tensor(img), mean, std)


class LocDataset(torch.utils.data.Dataset):
    """Photos + ground truth; images load lazily, boxes follow the preprocessing."""

    def __init__(self, image_paths: list[Path], truth: list[ImageBoxes], labels: list[int],
                 mode: str = "resize", size: int = 224, resize_short: int = 256,
                 mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        self.image_paths, self.truth, self.labels = image_paths, truth, labels
        self.mode, self.size, self.resize_short = mode, size, resize_short
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, i: int) -> LocSample:
        path, gt = self.image_paths[i], self.truth[i]
        with Image.open(path) as img:
            img.load()
            boxes = gt.boxes
            if gt.size is not None and tuple(gt.size) != img.size:
                # XML of the original release with a re-scaled photo: boxes follow the photo.
                boxes = boxes * np.array([img.size[0] / gt.size[0], img.size[1] / gt.size[1]] * 2)
            boxes = transform_boxes(boxes, img.size, self.mode, self.size, self.resize_short)
            x = preprocess(img, self.mode, self.size, self.resize_short, self.mean, self.std)
        return LocSample(gt.image_id, x, self.labels[i], boxes)


def load_val_dir(val_dir: str | Path, *, xml_dir: str | Path | None = None,
                 synsets: str | Path | None = None, limit: int | None = None,
                 mode: str = "resize", size: int = 224, resize_short: int = 256,
                 mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> LocDataset:
    """A folder with ``images/`` and either ``LOC_val_solution.csv`` or per-image XML files
    (``xml_dir``, else ``val_dir/xml`` or ``val_dir/Annotations``), plus ``LOC_synset_mapping.txt``.

    Images are taken in sorted file-name order; the first ``limit`` annotated ones are kept.
    """
    val_dir = Path(val_dir)
    img_dir = val_dir / "images" if (val_dir / "images").is_dir() else val_dir
    synsets = Path(synsets) if synsets else val_dir / "LOC_synset_mapping.txt"
    if not synsets.is_file():
        raise FileNotFoundError(f"{synsets}: class order file (LOC_synset_mapping.txt) not found")
    _, index = read_synset_mapping(synsets)
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
    paths, gts, labels = [], [], []
    for p in sorted(img_dir.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.stem not in truth:
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
    return LocDataset(paths, gts, labels, mode, size, resize_short, mean, std)


def collate(samples: list[LocSample]) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray],
                                               list[str]]:
    return (torch.stack([s.image for s in samples]), torch.tensor([s.label for s in samples]),
            [s.boxes for s in samples], [s.image_id for s in samples])
