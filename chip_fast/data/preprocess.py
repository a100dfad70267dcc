"""Input preprocessing: the one definition of how a photo becomes a model input, per model family.

Owns the geometry (resize + centre crop, or a plain resize) and the normalisation, and the same
geometry applied to boxes, so evaluation boxes always follow the pixels. Which normalisation a
model family was trained with is the family's own (``chip_fast.models.preprocess_of``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("center_crop", "resize", "squash")
# PIL's and torchvision's names; timm's data configs use the same words.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

def to_rgb(image):
    """A PIL image as 8-bit RGB. Grayscale, palette, CMYK and RGBA photos exist and PIL converts
    them; 16-bit and 32-bit single-channel images (16-bit PNG and TIFF: modes I;16*, I, F) PIL
    would clip at 255, which turns most of a 16-bit photo white, so they are scaled first:
    I;16* by 1/257 (its full range), I and F by the largest power-of-two range that holds the
    image's maximum (255, 65535; else the maximum itself)."""
    from PIL import Image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        a = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        else:
            peak = float(a.max()) if a.size else 0.0
            top = next((r for r in (1.0 if image.mode == "F" else 255.0, 255.0, 65535.0)
                        if peak <= r), peak)
        a = np.clip(a * (255.0 / max(top, 1e-12)), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """``mode="center_crop"``: resize the short side to ``resize``, centre-crop ``size`` (the
    ImageNet evaluation transform); ``mode="resize"``: resize straight to ``size`` x ``size``
    (aspect not kept); ``mode="squash"``: resize to ``resize`` x ``resize`` (aspect not kept),
    centre-crop ``size`` (timm's ``crop_mode="squash"``). Resizing uses ``interpolation``
    (timm models name theirs, mostly bicubic). Then scale to [0, 1] and normalise with
    ``mean`` / ``std``."""
    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mode: str = "center_crop"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; use one of {MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of "
                             f"{INTERPOLATIONS}")

    def geometry(self, image):
        """The resize and crop alone: a PIL image, or a (3, H, W) tensor, at size x size."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF
        kw = {"interpolation": InterpolationMode(self.interpolation)}
        if torch.is_tensor(image):
            kw["antialias"] = True   # PIL always antialiases; tensors only when asked
        if self.mode == "resize":
            return TF.resize(image, [self.size, self.size], **kw)
        if self.mode == "squash":
            return TF.center_crop(TF.resize(image, [self.resize, self.resize], **kw), self.size)
        return TF.center_crop(TF.resize(image, self.resize, **kw), self.size)

    def __call__(self, image) -> torch.Tensor:
        """A PIL image, or a (3, H, W) uint8 tensor (decoded by torchvision, on any device)."""
        from torchvision.transforms import functional as TF
        if torch.is_tensor(image):
            image = self.geometry(image).float().div_(255)
        else:
            image = TF.to_tensor(self.geometry(to_rgb(image)))
        return TF.normalize(image, self.mean, self.std)

    def boxes(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """(N, 4) boxes of an image of ``image_size`` (w, h) through the same geometry."""
        return transform_boxes(boxes, image_size, self.mode, self.size, self.resize)

    def denormalize(self, image: torch.Tensor) -> np.ndarray:
        """A preprocessed (3, H, W) tensor back to an (H, W, 3) float image in [0, 1]."""
        x = image.detach().cpu().float() * torch.tensor(self.std)[:, None, None] \
            + torch.tensor(self.mean)[:, None, None]
        return x.clamp(0, 1).permute(1, 2, 0).numpy()


# Boxes through the geometry: continuous coordinates, as the metrics treat them.

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
    central size x size (boxes cut by the crop are clipped, boxes outside it dropped);
    ``"squash"``: resize to resize_short x resize_short, then crop the same way.
    """
    if mode == "resize":
        return rescale_boxes(boxes, image_size, (size, size))
    if mode == "squash":
        square = (resize_short, resize_short)
        return crop_boxes(rescale_boxes(boxes, image_size, square),
                          center_crop_offset(square, size), (size, size))
    if mode == "center_crop":
        mid = resize_short_side_size(image_size, resize_short)
        return crop_boxes(rescale_boxes(boxes, image_size, mid),
                          center_crop_offset(mid, size), (size, size))
    raise ValueError(f"unknown preprocessing mode {mode!r}; use one of {MODES}")
