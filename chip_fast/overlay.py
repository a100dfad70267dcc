"""Heat-map overlays: a CHIP map blended on its photo, written as PNG.

Owns colours and blending only; maps come from ``chip_fast.explain``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Anchor colours of a perceptually ordered map (dark blue -> cyan -> yellow -> red), linearly
# interpolated: enough for a heat map without making matplotlib a dependency.
_ANCHORS = np.array([[0.05, 0.03, 0.35], [0.0, 0.45, 0.85], [0.1, 0.8, 0.75],
                     [0.95, 0.9, 0.15], [0.85, 0.1, 0.05]])


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
