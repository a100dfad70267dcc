"""MaxBoxAccV2 as clovaai/wsolevaluation computes it (``chip_fast.evaluation.wsol``), on small
maps whose boxes and IoUs are worked out by hand in the comments."""
from __future__ import annotations

import numpy as np
import pytest

from chip_fast.evaluation import metrics as M
from chip_fast.evaluation import wsol as W


def _boxes(per_threshold):
    return [sorted(map(tuple, b.tolist())) for b in per_threshold]


def test_uint8_quantisation_and_strict_threshold_decide_which_pixels_stay():
    # 1.0 -> 255 and 0.5 -> 127 (truncated). At 0.49 the cut is int(124.95) = 124: both pixels
    # stay, two separate contours; at 0.50 the cut is int(127.5) = 127 and 127 > 127 is false.
    m = np.zeros((5, 5))
    m[1, 1], m[3, 3] = 1.0, 0.5
    grid = W.v2_thresholds()
    assert len(grid) == 100 and grid[0] == 0 and grid[-1] == pytest.approx(0.99)
    got = _boxes(W.contour_boxes(m, grid[[49, 50]]))
    # a 1x1 contour at x=1: (x, y, x + w, y + h) = (1, 1, 2, 2); at x=3: x + w = 4 = W - 1
    assert got == [[(1, 1, 2, 2), (3, 3, 4, 4)], [(1, 1, 2, 2)]]


def test_box_is_clamped_to_the_last_pixel_and_an_empty_mask_is_the_one_pixel_box():
    m = np.zeros((5, 5))
    m[0:2, 3:5] = 1.0                       # rect x=3, y=0, w=2, h=2
    assert _boxes(W.contour_boxes(m, [0.0])) == [[(3, 0, 4, 2)]]   # x1 = min(5, 4)
    assert _boxes(W.contour_boxes(np.zeros((4, 6)), [0.0, 0.5])) == [[(0, 0, 0, 0)]] * 2


def test_hole_borders_are_contours_too():
    # RETR_TREE returns the border of the 3x3 hole (rows/cols 3..5) as well as the outer one;
    # the hole's border runs over the foreground pixels around it, rows/cols 2..6: x=2, w=5.
    m = np.ones((9, 9))
    m[3:6, 3:6] = 0
    assert _boxes(W.contour_boxes(m, [0.0])) == [[(0, 0, 8, 8), (2, 2, 7, 7)]]


def test_inclusive_iou():
    # [0,0,1,1] and [1,1,2,2] are 2x2 pixel boxes sharing one pixel: 1 / (4 + 4 - 1); the
    # one-pixel box [0,0,0,0] is a corner of [0,0,1,1] (1 / 4) and is itself (1)
    iou = W.inclusive_iou(np.array([[0, 0, 1, 1], [0, 0, 0, 0]]), np.array([[1, 1, 2, 2],
                                                                            [0, 0, 0, 0]]))
    assert iou == pytest.approx(np.array([[1 / 7, 1 / 4], [0.0, 1.0]]))


def _two_blobs() -> np.ndarray:
    """A 5x5 block of 0.5 (rows/cols 0..4) and a 2x2 block of 1.0 (rows/cols 7..8)."""
    m = np.zeros((10, 10))
    m[0:5, 0:5] = 0.5
    m[7:9, 7:9] = 1.0
    return m


def _nested() -> np.ndarray:
    """A 6x6 block of 0.5 (rows/cols 2..7) around a 2x2 core of 1.0 (rows/cols 4..5)."""
    m = np.zeros((10, 10))
    m[2:8, 2:8] = 0.5
    m[4:6, 4:6] = 1.0
    return m


def test_max_box_acc_v2_on_hand_worked_images():
    # Thresholds 0.3 (cut 76: every non-zero pixel) and 0.6 (cut 153: only the 1.0 pixels).
    # Boxes: two blobs -> [0,0,5,5] and [7,7,9,9] at 0.3, [7,7,9,9] at 0.6;
    #        nested    -> [2,2,8,8] (7x7 = 49 px) at 0.3, [4,4,6,6] (3x3 = 9 px) at 0.6.
    maps = np.stack([_two_blobs(), _nested(), _nested(), _nested()])
    gts = [np.array([[0, 0, 5, 5]]),
           np.array([[3.7, 3.2, 7.99, 7.5]]),   # truncated to [3,3,7,7], 5x5 = 25 px
           np.array([[4, 4, 6, 6]]), np.array([[4, 4, 6, 6]])]
    ious = W.multi_contour_ious(maps, gts, [0.3, 0.6])
    # two blobs: the smaller blob is a box too, so the big one still counts at 0.3; at 0.6 only
    # the small one is left (IoU 0). Nested vs [3,3,7,7]: 25/49 at 0.3, 9/25 at 0.6. Nested vs
    # [4,4,6,6]: 9/49 at 0.3, 1 at 0.6.
    assert ious == pytest.approx(np.array([[1, 0], [25 / 49, 9 / 25], [9 / 49, 1], [9 / 49, 1]]))
    r = W.max_box_acc_v2(ious, [0.3, 0.6])
    # IoU 0.3: 2/4 at 0.3, 3/4 at 0.6; IoU 0.5: 2/4 and 2/4 (the first wins); 0.7: 1/4 and 2/4
    assert r["max_box_acc_v2@0.3"] == 0.75 and r["max_box_acc_v2_threshold@0.3"] == 0.6
    assert r["max_box_acc_v2@0.5"] == 0.5 and r["max_box_acc_v2_threshold@0.5"] == 0.3
    assert r["max_box_acc_v2@0.7"] == 0.5 and r["max_box_acc_v2_threshold@0.7"] == 0.6
    assert r["max_box_acc_v2"] == pytest.approx((0.75 + 0.5 + 0.5) / 3)


def test_every_contour_counts_where_the_largest_component_misses():
    # The ground truth is the small blob: the largest 8-connected component (MaxBoxAcc) boxes
    # the big one at every threshold that keeps it; one of the contours is the small blob.
    m, gt = _two_blobs(), [np.array([[7, 7, 9, 9]])]
    v1 = M.localization_ious(m[None], gt, [0.3])[0, 0]
    v2 = W.multi_contour_ious(m[None], gt, [0.3])[0, 0]
    assert v1 == 0 and v2 == 1


def test_maps_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        W.contour_boxes(np.full((3, 3), 1.5), [0.0])
