"""Heat-map overlays: a CHIP map blended on its photo, written as PNG.

Owns colours, blending and drawing on the picture (the colour bar, the class name, the part of
the photo the model did not see); maps come from ``chip_fast.maps.explain``, and the geometry that
turns a photo into the model's input is ``chip_fast.data.preprocess``'s: a map goes back onto the
photo through the inverse of that geometry, at the photo's own size and aspect ratio.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.preprocess import Preprocess, center_crop_offset, resize_short_side_size, to_rgb

# Anchor colours of a perceptually ordered map (dark blue -> cyan -> yellow -> red), linearly
# interpolated: enough for a heat map without making matplotlib a dependency.
_ANCHORS = np.array([[0.05, 0.03, 0.35], [0.0, 0.45, 0.85], [0.1, 0.8, 0.75],
                     [0.95, 0.9, 0.15], [0.85, 0.1, 0.05]])
DIM = 0.35   # brightness of the part of a photo the model's input does not show


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB floats in [0, 1], shape (..., 3)."""
    v = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    i = np.minimum(v.astype(int), len(_ANCHORS) - 2)
    f = (v - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


def blend(photo: np.ndarray, heat: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Blend a (H, W) map on an (H, W, 3) photo in [0, 1]; the map's weak parts stay see-through."""
    heat = np.clip(heat, 0, 1)
    alpha = opacity * (0.35 + 0.65 * heat)[..., None]
    return photo * (1 - alpha) + colormap(heat) * alpha


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) float image in [0, 1] as PNG."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def input_region(prep: Preprocess, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of a photo of ``image_size`` (w, h) that the model's input shows, as
    (x0, y0, x1, y1) in the photo's pixels: the whole photo for ``mode="resize"``; for
    ``"center_crop"`` the source of the crop (the inverse of resize-short-side, then crop)."""
    w, h = image_size
    if prep.mode == "resize":
        return 0.0, 0.0, float(w), float(h)
    mid = resize_short_side_size(image_size, prep.resize)
    left, top = center_crop_offset(mid, prep.size)
    sx, sy = w / mid[0], h / mid[1]
    return (max(0.0, left * sx), max(0.0, top * sy), min(float(w), (left + prep.size) * sx),
            min(float(h), (top + prep.size) * sy))


def heat_on_photo(heat: np.ndarray, photo_size: tuple[int, int],
                  region: tuple[float, float, float, float]) -> np.ndarray:
    """A map of the model's input (h, w) resampled onto a photo of ``photo_size`` (W, H):
    (H, W) float32, bilinear at pixel centres, NaN where the input does not reach."""
    width, height = photo_size
    x0, y0, x1, y1 = region
    # normalised input coordinates (-1..1 across the input) of every photo pixel's centre
    gx = 2 * (torch.arange(width, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) - 1
    gy = 2 * (torch.arange(height, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]
    src = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)[0, 0]
    outside = (grid[0].abs() > 1).any(-1)
    return out.masked_fill(outside, float("nan")).numpy()


def _font(px: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=px)   # scalable where Pillow has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: float) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def draw_legend(image, label: str) -> None:
    """Draw on ``image`` (PIL, RGB) a dark band along the bottom with ``label`` on the left and
    the colour bar of the map (0 to 1, the map normalised) on the right."""
    from PIL import Image, ImageDraw
    width, height = image.size
    band = int(min(64, max(22, round(0.09 * min(width, height)))))
    font = _font(max(9, round(band * 0.55)))
    shade = Image.new("RGBA", (width, band), (0, 0, 0, 170))
    image.paste(shade, (0, height - band), shade)
    draw = ImageDraw.Draw(image)
    pad = max(3, band // 5)
    bar_w = int(min(0.22 * width, 8 * band))
    tick_w = draw.textlength("0", font=font)
    bar_x0 = width - pad - tick_w - pad // 2 - bar_w
    ramp = (colormap(np.linspace(0, 1, bar_w))[None].repeat(band - 2 * pad, 0) * 255)
    image.paste(Image.fromarray(ramp.round().astype(np.uint8)), (int(bar_x0), height - band + pad))
    mid = height - band / 2
    draw.text((bar_x0 - pad // 2, mid), "0", fill="white", font=font, anchor="rm")
    draw.text((width - pad, mid), "1", fill="white", font=font, anchor="rm")
    room = bar_x0 - tick_w - 2 * pad - pad
    draw.text((pad, mid), _fit(draw, label, font, room), fill="white", font=font, anchor="lm")


def overlay_on_photo(photo, heat: np.ndarray, prep: Preprocess, label: str = "",
                     max_side: int = 2048, opacity: float = 0.5):
    """The map ``heat`` (h, w) of the model's input for ``photo`` (a PIL image), blended on the
    photo at its own resolution and aspect ratio (shrunk to ``max_side`` pixels on the long
    side where larger; 0: never), with the part the model did not see dimmed and outlined, and
    ``label`` and the colour bar drawn along the bottom. Returns a PIL RGB image."""
    from PIL import Image, ImageDraw
    photo = to_rgb(photo)
    region = np.array(input_region(prep, photo.size))
    scale = min(1.0, max_side / max(photo.size)) if max_side else 1.0
    if scale < 1.0:
        photo = photo.resize((max(1, round(photo.width * scale)),
                              max(1, round(photo.height * scale))), Image.BILINEAR)
        region = region * scale
    rgb = np.asarray(photo, dtype=np.float32) / 255.0
    full = heat_on_photo(heat, photo.size, tuple(region))
    seen = ~np.isnan(full)
    out = rgb * DIM
    out[seen] = blend(rgb[seen], full[seen], opacity)
    image = Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    if not seen.all():   # outline what the model saw
        x0, y0, x1, y1 = region
        ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(235, 235, 235),
                                        width=max(1, round(max(photo.size) / 400)))
    if label:
        draw_legend(image, label)
    return image
