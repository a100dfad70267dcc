"""MaxBoxAccV2 (Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right",
CVPR 2020) computed the way their reference code, ``clovaai/wsolevaluation``, computes it.

It differs from ``metrics``' MaxBoxAcc (largest 8-connected component, continuous box
coordinates) in every step, and each difference moves the number, so all are kept:

- the map is quantised to uint8 (``int(m * 255)``, truncating) before thresholding, and a pixel is
  kept where its uint8 value is *strictly above* ``int(t * max)``;
- every contour of the binary mask found by ``cv2.findContours`` with ``RETR_TREE`` (outer borders
  and hole borders alike) gives a box, and the image counts as localised at a threshold if *any*
  of them reaches the IoU with *any* ground-truth box;
- a contour's bounding rect ``x, y, w, h`` becomes the box ``(x, y, min(x + w, W - 1),
  min(y + h, H - 1))`` and IoU counts inclusive pixels (+1 on each side), as their code does;
- a threshold that keeps no pixel gives the box ``(0, 0, 0, 0)`` (one pixel), not no box;
- ground-truth boxes are truncated to integers (their ``resize_bbox``);
- thresholds are ``np.arange(0, 1, step)`` (1.0 excluded), the best one is chosen per IoU level,
  and MaxBoxAccV2 is the mean of the best accuracies at IoU 0.3, 0.5 and 0.7.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IOU_LEVELS = (0.3, 0.5, 0.7)


def v2_thresholds(step: float = 0.01) -> np.ndarray:
    """The reference grid, ``np.arange(0, 1, step)``: the same float values, so ``int(t * 255)``
    truncates exactly as theirs does (0.01 steps: 100 thresholds, 0.00 .. 0.99)."""
    return np.arange(0, 1, step)


def contour_boxes(saliency: np.ndarray, thresholds: Sequence[float]) -> list[np.ndarray]:
    """For each threshold, the (K, 4) integer boxes ``x0, y0, x1, y1`` of every contour of the
    thresholded uint8 map (``[[0, 0, 0, 0]]`` when no pixel is kept)."""
    m = np.asarray(saliency, dtype=np.float64)
    if m.ndim != 2 or not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise ValueError("MaxBoxAccV2 needs a finite 2-D map with values in [0, 1]")
    h, w = m.shape
    img = (m * 255).astype(np.uint8)
    peak = int(img.max())
    by_cut: dict[int, np.ndarray] = {}   # neighbouring thresholds often truncate to one cut
    out = []
    for t in thresholds:
        cut = int(t * peak)
        if cut not in by_cut:
            mask = np.where(img > cut, 255, 0).astype(np.uint8)   # cv2.THRESH_BINARY at cut
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            boxes = [cv2.boundingRect(c) for c in contours]
            by_cut[cut] = (np.array([[x, y, min(x + bw, w - 1), min(y + bh, h - 1)]
                                     for x, y, bw, bh in boxes], dtype=np.int64)
                           if boxes else np.zeros((1, 4), dtype=np.int64))
        out.append(by_cut[cut])
    return out


def inclusive_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, G) IoU of integer boxes counting pixels inclusively (a box x0..x1 is x1 - x0 + 1
    wide); a pair whose union is not positive gets 0."""
    pred = np.asarray(pred, dtype=np.float64)[:, None, :]
    gt = np.asarray(gt, dtype=np.float64)[None, :, :]
    iw = np.maximum(0, np.minimum(pred[..., 2], gt[..., 2])
                    - np.maximum(pred[..., 0], gt[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(pred[..., 3], gt[..., 3])
                    - np.maximum(pred[..., 1], gt[..., 1]) + 1)
    inter = iw * ih
    area_p = (pred[..., 2] - pred[..., 0] + 1) * (pred[..., 3] - pred[..., 1] + 1)
    area_g = (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
    union = area_p + area_g - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def multi_contour_ious(maps: np.ndarray, gt_boxes: Sequence[np.ndarray],
                       thresholds: Sequence[float]) -> np.ndarray:
    """(B, T): per image and threshold, the best IoU of any contour's box with any ground-truth
    box (0 for an image without boxes)."""
    out = np.zeros((len(maps), len(thresholds)))
    for i, (m, gt) in enumerate(zip(maps, gt_boxes)):
        if not len(gt):
            continue
        per_t = contour_boxes(m, thresholds)
        starts = np.cumsum([0] + [len(b) for b in per_t[:-1]])
        best = inclusive_iou(np.concatenate(per_t), np.asarray(gt).astype(np.int64)).max(1)
        out[i] = np.maximum.reduceat(best, starts)
    return out


def max_box_acc_v2(ious: np.ndarray, thresholds: Sequence[float],
                   levels: Sequence[float] = IOU_LEVELS) -> dict:
    """MaxBoxAccV2 from ``multi_contour_ious``: the best accuracy over thresholds at each IoU
    level, and their mean."""
    out: dict = {}
    for level in levels:
        acc = (ious >= level).mean(0)
        best = int(np.argmax(acc))
        out[f"max_box_acc_v2@{level:g}"] = float(acc[best])
        out[f"max_box_acc_v2_threshold@{level:g}"] = float(np.asarray(thresholds)[best])
    out["max_box_acc_v2"] = float(np.mean([out[f"max_box_acc_v2@{lv:g}"] for lv in levels]))
    return out
