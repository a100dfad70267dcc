"""Distillation images: an ImageFolder / ILSVRC ``train/<wnid>/`` tree, or in-memory tensors.

A source answers three questions: which classes it has, how many images each class has, and the
preprocessed (3, H, W) tensor of image j of class c. Views (the original, its mirror image and
random crops, each keyed by (seed, class, view)) are made from those tensors by ``make_view``,
so both kinds of source augment the same way.

Owns decoding, class folders and views; the preprocessing itself is ``chip_fast.data.preprocess``'s
and class orders are ``chip_fast.data.classes``'.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from .. import rng
from .classes import imagenet_classes, read_mapping
from .preprocess import Preprocess, to_rgb

logger = logging.getLogger("chip_fast")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


class ImageError(ValueError):
    """An image file that cannot be decoded."""


def load_image(path: str | Path, preprocess: Preprocess,
               decode_device: str | torch.device | None = None) -> torch.Tensor:
    """Decode and preprocess one image; a file that cannot be decoded raises ImageError naming it.

    With ``decode_device`` (e.g. "cuda"), JPEGs are decoded by torchvision on that device (nvJPEG
    on CUDA) and preprocessed there; other formats, and JPEGs it rejects, go through PIL.
    """
    if decode_device is not None and Path(path).suffix.lower() in (".jpg", ".jpeg"):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
        try:
            data = read_file(str(path))
            image = decode_jpeg(data, mode=ImageReadMode.RGB, device=decode_device)
            return preprocess(image)
        except RuntimeError:
            pass  # CMYK and other JPEG flavours nvJPEG refuses: PIL reads them or names the file
    return preprocess(open_photo(path))


def open_photo(path: str | Path):
    """The photo at ``path`` as an 8-bit RGB PIL image, decoded now; a file PIL cannot read is
    an ImageError naming it (the one message of every command that reads photos)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"cannot decode image {path}: {e}") from e


def check_folder_order(names: list[str] | None, num_classes: int) -> None:
    """Warn where folders numbered in sorted order (``ImageFolderSource.sorted_order``) cannot be
    the order of the model's outputs: that order is a model's trained on exactly these folders,
    which has one output per folder."""
    if names is None or len(names) == num_classes:
        return
    shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
    warnings.warn(f"class folders {shown} are not ImageNet wnids, so they are numbered 0-"
                  f"{len(names) - 1} in sorted order (torchvision ImageFolder's rule, right for "
                  f"a model trained on exactly these {len(names)} folders), but the model has "
                  f"{num_classes} outputs: name the folders by wnid (n01440764) or pass "
                  "mapping_file= (--mapping-file) to say which output each folder is",
                  stacklevel=3)


class _Source:
    """What distillation asks of a source: its classes, how many images each has, image j."""
    files: dict[int, list]

    @property
    def classes(self) -> list[int]:
        return sorted(self.files)

    def count(self, c: int) -> int:
        return len(self.files[c])

    def load(self, c: int, j: int) -> torch.Tensor:
        raise NotImplementedError


class ImageFolderSource(_Source):
    """Images in ``root/<class folder>/<image>``, as in ILSVRC ``train/`` and torchvision ImageFolder.

    Class indices: a folder named by an ImageNet wnid keeps its ImageNet index (the standard
    ILSVRC order), also when only some classes are present; ``mapping_file`` (the format of
    ``LOC_synset_mapping.txt``: line i is ``wnid name``) gives another order. Folders that are not
    all wnids and have no mapping get the sorted-folder order of torchvision's ImageFolder.
    Empty folders are skipped with a warning. An image that cannot be decoded is reported by
    name and replaced by the class's next image (``on_error="skip"``) or stops the job
    (``on_error="raise"``). ``decode_device="cuda"`` decodes JPEGs on the GPU (torchvision's
    nvJPEG); the default decodes with PIL on the CPU threads of the distillation job.
    ``preprocess``: how a photo becomes an input; left None, the distillation sets the
    preprocessing of the model it distils (``chip_fast.models.preprocess_of``), so a folder is
    never read with another model family's normalisation.
    """

    def __init__(self, root: str | Path, *, mapping_file: str | Path | None = None,
                 preprocess: Preprocess | None = None, on_error: str = "skip",
                 decode_device: str | torch.device | None = None) -> None:
        self.root = Path(root)
        self.decode_device = decode_device
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is a file: give the folder of class folders "
                                     "(root/<class>/<image>)")
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.preprocess = preprocess
        self.on_error = on_error
        self.skipped: list[Path] = []
        folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        if not folders:
            raise ValueError(f"{self.root} has no class folders (expected root/<class>/<image>)")
        index, self.class_ids, self.class_names = self._class_index([p.name for p in folders],
                                                                     mapping_file)
        # The folder names when they were numbered in sorted order (no wnids, no mapping).
        self.sorted_order = (list(self.class_ids) if mapping_file is None
                             and self.class_ids != list(imagenet_classes()[0]) else None)
        self.files: dict[int, list[Path]] = {}
        self.empty_folders: list[str] = []
        for folder in folders:
            files = sorted(p for p in folder.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                self.empty_folders.append(folder.name)
                continue
            self.files[index[folder.name]] = files
        if self.empty_folders:
            warnings.warn(f"{self.root}: skipping {len(self.empty_folders)} class folder(s) with no "
                          f"images: {', '.join(self.empty_folders[:10])}", stacklevel=2)
        if not self.files:
            raise ValueError(f"{self.root}: no class folder holds an image")

    @staticmethod
    def _class_index(names: list[str], mapping_file):
        if mapping_file is not None:
            wnids, labels = read_mapping(mapping_file)
        else:
            wnids, labels = map(list, imagenet_classes())
            if not set(names) <= set(wnids):
                # Right for a model trained on exactly these folders (torchvision's
                # ImageFolder); the job checks that against the model's outputs (sorted_order).
                logger.info("folders are not all ImageNet wnids: using sorted folder order")
                return {n: i for i, n in enumerate(names)}, list(names), list(names)
        position = {w: i for i, w in enumerate(wnids)}
        unknown = [n for n in names if n not in position]
        if unknown:
            raise ValueError(f"class folder(s) {unknown[:10]} are not in the mapping "
                             f"{mapping_file}")
        return {n: position[n] for n in names}, wnids, labels

    def load(self, c: int, j: int) -> torch.Tensor:
        if self.preprocess is None:
            raise ValueError(f"{self.root}: no preprocessing to read the photos with: give "
                             "ImageFolderSource(..., preprocess=chip_fast.preprocess_of(model)), "
                             "or pass the source to distill_all_classes, which sets the model's")
        files = self.files[c]
        for attempt in range(len(files)):
            path = files[(j + attempt) % len(files)]
            try:
                return load_image(path, self.preprocess, self.decode_device)
            except ImageError as e:
                if self.on_error == "raise":
                    raise
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"{e}; using the next image of its class instead", stacklevel=2)
        raise ImageError(f"no image of class {c} in {self.root} can be decoded")

    def read_encoded(self, c: int, j: int) -> torch.Tensor | None:
        """The bytes of image j of class c when it is a JPEG (for ``decode_many``), else None.
        Reads the file only: safe on any thread, also while CUDA graphs are being captured."""
        path = self.files[c][j % len(self.files[c])]
        if path.suffix.lower() not in (".jpg", ".jpeg"):
            return None
        from torchvision.io import read_file
        try:
            return read_file(str(path))
        except RuntimeError:
            return None   # unreadable: load() reports it or takes the class's next image

    def decode_many(self, items: list[tuple[int, int]],
                    encoded: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """Images (c, j) of ``items`` preprocessed on ``decode_device``: the JPEGs among
        ``encoded`` (``read_encoded``) in one batched call of torchvision's nvJPEG decoder,
        the others, and every one of a batch the decoder refuses, through ``load``."""
        from torchvision.io import ImageReadMode, decode_jpeg
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = [i for i, e in enumerate(encoded) if e is not None]
        if todo and self.preprocess is not None:
            try:
                images = decode_jpeg([encoded[i] for i in todo], mode=ImageReadMode.RGB,
                                     device=self.decode_device)
                for i, image in zip(todo, images):
                    out[i] = self.preprocess(image)
            except RuntimeError:
                pass   # a file nvJPEG refuses (CMYK, damaged): each one on its own below
        return [o if o is not None else self.load(c, j) for o, (c, j) in zip(out, items)]


class TensorSource(_Source):
    """Preprocessed images in memory: ``images`` (N, 3, H, W) float and ``labels`` (N,) int.
    ``preprocess``: how they were normalised, if known (the channel atlas then shows the
    photos' true colours)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                 class_names: Sequence[str] | None = None,
                 preprocess: Preprocess | None = None) -> None:
        labels = torch.as_tensor(labels)
        if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError("images must be a float tensor of shape (N, C, H, W), preprocessed")
        if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise ValueError(f"labels must be N={len(images)} integer class indices")
        if len(labels) and int(labels.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        self.images = images
        self.preprocess = preprocess
        self.class_ids = None
        self.class_names = list(class_names) if class_names is not None else None
        self.files: dict[int, list[int]] = {}
        for i, c in enumerate(labels.tolist()):
            self.files.setdefault(int(c), []).append(i)
        self.skipped: list = []

    def load(self, c: int, j: int) -> torch.Tensor:
        return self.images[self.files[c][j % len(self.files[c])]]


TRAIN_DIR_ENV = "CHIP_FAST_TRAIN_DIR"

# What a distillation accepts as its images (see ``as_source``).
DataLike = Union[ImageFolderSource, TensorSource, str, Path,
                 tuple[torch.Tensor, torch.Tensor | Sequence[int]], None]


def as_source(data: DataLike = None, **folder_options: Any) -> ImageFolderSource | TensorSource:
    """Accept a source, a folder path, an (images, labels) pair, or None: the folder named by
    the environment variable ``CHIP_FAST_TRAIN_DIR`` (the ``train/<wnid>/*.JPEG`` tree a user
    already has; wnid folders keep their ImageNet indices, the class order of ImageNet models).

    ``folder_options`` (``mapping_file``, ``preprocess``, ``on_error``, ``decode_device``) apply
    where this opens a folder, i.e. for a path or None; a source made without a preprocessing
    takes ``preprocess`` (the job passes the model's)."""
    if data is None:
        root = os.environ.get(TRAIN_DIR_ENV, "").strip()
        if not root:
            raise ValueError(
                "no training images given: pass data= (a train/<wnid>/*.JPEG folder, an "
                "ImageFolderSource or an (images, labels) pair), or set the environment "
                f"variable {TRAIN_DIR_ENV} to your ImageNet train/ folder, e.g. "
                f"export {TRAIN_DIR_ENV}=/data/imagenet/train")
        if not Path(root).is_dir():
            raise FileNotFoundError(f"{TRAIN_DIR_ENV}={root} is not a folder (it should name "
                                    "the train/<wnid>/*.JPEG tree of your training images)")
        return ImageFolderSource(root, **folder_options)
    if isinstance(data, (ImageFolderSource, TensorSource)):
        if data.preprocess is None:
            data.preprocess = folder_options.get("preprocess")
        return data
    if isinstance(data, (str, Path)):
        return ImageFolderSource(data, **folder_options)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return TensorSource(*data)
    raise TypeError("data must be an ImageFolderSource, a TensorSource, a folder path or an "
                    f"(images, labels) pair, got {type(data).__name__}")


def views_per_image(augment: bool | int) -> int:
    """Number of views made of each image: 1 without augmentation, 8 with ``True``, or ``n``."""
    if augment is True:
        return 8
    if augment is False or augment is None:
        return 1
    if isinstance(augment, int) and augment >= 1:
        return augment
    raise ValueError(f"augment must be a bool or a positive int, got {augment!r}")


def make_view(image: torch.Tensor, c: int, v: int, n_images: int, seed: int) -> torch.Tensor:
    """View ``v`` of class ``c``: image v % n_images, transformed by variant v // n_images.

    Variant 0 is the image itself, 1 its mirror image, and >= 2 a random resized crop (scale
    0.35-1, aspect 3/4-4/3) with a random flip, drawn from the counter RNG keyed by (seed, c, v).
    """
    variant = v // n_images
    if variant == 0:
        return image
    if variant == 1:
        return image.flip(-1)
    w = rng.augment_words(seed, torch.tensor([c]), torch.tensor([v]))
    u = [float(rng.uniform_from_u32(x)[0]) for x in w]
    h, wd = image.shape[-2:]
    area = h * wd * (0.35 + 0.65 * u[0])
    aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    ch = min(h, max(8, int(round(math.sqrt(area / aspect)))))
    cw = min(wd, max(8, int(round(math.sqrt(area * aspect)))))
    top = int(u[2] * (h - ch + 1))
    left = int((u[3] * 2 % 1.0) * (wd - cw + 1))
    crop = image[..., top:top + ch, left:left + cw]
    out = F.interpolate(crop[None], size=(h, wd), mode="bilinear", align_corners=False)[0]
    return out.flip(-1) if u[3] >= 0.5 else out


@dataclass
class ViewPlan:
    """Which view each sample of a class uses: views are spread evenly over the samples of each
    stage (one stage, all samples, unless a job stops classes early), so a block of consecutive
    samples shares few views, one prefix pass serves many samples, and every stage weighs the
    class's views alike."""
    n_samples: int
    views: dict[int, int] = field(default_factory=dict)   # class -> number of views
    design: str = "independent"   # a paired mask design: the two samples of a pair share their view
    stages: tuple[int, ...] = ()  # where each stage of samples ends; () is one stage

    def view_of(self, c: int, samples: torch.Tensor) -> torch.Tensor:
        start = rng.pair_start(samples, self.design)
        ends = torch.tensor(self.stages or (self.n_samples,), dtype=start.dtype,
                            device=start.device)
        stage = torch.bucketize(start, ends, right=True)
        first = torch.cat([ends.new_zeros(1), ends[:-1]])[stage]
        return ((start - first) * self.views[c]) // (ends[stage] - first)
