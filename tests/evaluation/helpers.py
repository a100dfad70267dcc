"""What the evaluation tests build and check against: rectangle maps, annotation files, a
stand-in importance, and box accuracy by a brute-force loop written independently of
``chip_fast.evaluation.metrics``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def rect_map(h: int, w: int, box: tuple[int, int, int, int], value: float = 1.0) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value      # pixels x0..x1-1: the box [x0, x1] in continuous coordinates
    return m


def brute_force_box_accuracy(maps: np.ndarray, gts: list[np.ndarray], thresholds,
                             iou_threshold: float = 0.5) -> np.ndarray:
    """Box accuracy per threshold, written out independently of the harness: per map and
    threshold t, the pixels with value > t * max, their 8-connected components (scipy, not
    OpenCV), the largest one's box [x0, y0, x1 + 1, y1 + 1], its IoU with each ground-truth box
    by the textbook formula, a hit at IoU >= 0.5 with any of them."""
    from scipy import ndimage
    acc = []
    for t in thresholds:
        hits = 0
        for m, gt in zip(maps, gts):
            labels, n = ndimage.label(m > t * m.max(), structure=np.ones((3, 3)))
            if n == 0:
                continue
            ys, xs = np.nonzero(labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]))
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            for gx0, gy0, gx1, gy1 in gt:
                inter = max(0, min(x1, gx1) - max(x0, gx0)) * max(0, min(y1, gy1) - max(y0, gy0))
                union = (x1 - x0) * (y1 - y0) + (gx1 - gx0) * (gy1 - gy0) - inter
                if inter / union >= iou_threshold:
                    hits += 1
                    break
        acc.append(hits / len(maps))
    return np.array(acc)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


VOC = """<annotation><folder>val</folder><filename>{name}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>
</annotation>"""


def toy_importance(model: torch.nn.Module, layer: str, weights: torch.Tensor):
    import chip_fast
    from chip_fast.models.fingerprint import model_fingerprint
    n = weights.shape[0]
    return chip_fast.Importance(weights={layer: weights}, classes=list(range(n)), num_classes=n,
                                fingerprint=model_fingerprint(model), settings={})
