"""Metrics of saliency maps (``chip_fast.evaluation.metrics``): localization, pointing game,
deletion/insertion and the sanity check, on synthetic maps with known answers and against a
brute-force loop written independently (``tests/evaluation/helpers.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chip_fast.evaluation import metrics as M
from tests.evaluation.helpers import brute_force_box_accuracy, rect_map


# --- localization ------------------------------------------------------------------------------

def test_rectangle_equal_to_box_has_iou_one_and_accuracy_one():
    box = (30, 40, 130, 100)
    maps = rect_map(224, 224, box)[None]
    gt = [np.array([box], float)]
    ious = M.localization_ious(maps, gt)
    inner = (M.DEFAULT_THRESHOLDS > 0) & (M.DEFAULT_THRESHOLDS < 1)
    assert np.allclose(ious[0, inner], 1.0)
    s = M.localization_summary(ious, np.array([True]))
    assert s["gt_known@0.2"] == s["gt_known@0.15"] == s["max_box_acc"] == 1.0
    assert s["top1_loc_err"] == 0.0
    # the class was wrong: top-1 localization fails though the box is perfect
    assert M.localization_summary(ious, np.array([False]))["top1_loc_err"] == 1.0


def test_shifted_rectangle_gives_computed_iou():
    maps = rect_map(224, 224, (60, 50, 100, 90))[None]            # 40 x 40, shifted by 10 px
    ious = M.localization_ious(maps, [np.array([[50, 50, 90, 90.]])], [0.2, 0.5])
    assert np.allclose(ious, 30 * 40 / (2 * 1600 - 30 * 40))      # 0.6
    far = M.localization_ious(rect_map(224, 224, (80, 50, 120, 90))[None],
                              [np.array([[50, 50, 90, 90.]])], [0.2])
    assert far[0, 0] == pytest.approx(10 * 40 / (3200 - 400)) and far[0, 0] < 0.5


def test_largest_component_and_any_gt_box_counts():
    m = rect_map(100, 100, (5, 5, 15, 15)) + rect_map(100, 100, (50, 50, 90, 80), 0.5)
    boxes = M.largest_component_boxes(m, [0.2, 0.6])
    assert boxes[0].tolist() == [50, 50, 90, 80]      # the larger blob, though dimmer
    assert boxes[1].tolist() == [5, 5, 15, 15]        # only the bright blob survives 0.6
    gt = [np.array([[0, 0, 20, 20], [50, 50, 90, 80.]])]
    assert np.allclose(M.localization_ious(m[None], gt, [0.2, 0.6]), [[1.0, 0.25]])
    assert M.largest_component_boxes(np.zeros((8, 8)), [0.5])[0].tolist() == [-1] * 4
    assert M.localization_ious(np.zeros((1, 8, 8)), [np.array([[0, 0, 8, 8.]])], [0.5])[0, 0] == 0


def test_box_accuracy_curve_known_by_construction():
    """Four maps whose box accuracy at every threshold follows from how they are drawn: the
    object box on a flat background of 0.305 (found from t = 0.31 on: below, the whole image is
    one component, IoU 0.19), the same on 0.605 (from 0.61), a box in the wrong place (never),
    and the box on zero (always, until t = 1 keeps no pixel)."""
    box = (16, 16, 48, 40)
    maps = np.stack([rect_map(64, 64, box) + 0.305 * (1 - rect_map(64, 64, box)),
                     rect_map(64, 64, box) + 0.605 * (1 - rect_map(64, 64, box)),
                     rect_map(64, 64, (0, 0, 20, 20)),
                     rect_map(64, 64, box)])
    s = M.localization_summary(M.localization_ious(maps, [np.array([box], float)] * 4),
                               np.array([True, False, True, True]))
    t = M.DEFAULT_THRESHOLDS
    expected = np.select([t <= 0.30, t <= 0.60, t < 1.0], [0.25, 0.5, 0.75], 0.0)
    assert np.allclose(s["box_acc_curve"], expected)
    assert s["max_box_acc"] == 0.75 and s["max_box_acc_threshold"] == 0.61
    assert s["gt_known@0.2"] == s["gt_known@0.15"] == 0.25
    assert s["top1_loc_err"] == 0.75          # only the last map is right at 0.2 with its class


def test_box_accuracy_equals_a_brute_force_loop():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    maps, gts = [], []
    for _ in range(12):
        cx, cy, s = rng.uniform(10, 54), rng.uniform(10, 54), rng.uniform(4, 14)
        maps.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) + 0.1 * rng.random((64, 64)))
        gts.append(np.array([[cx - s, cy - s, cx + s, cy + s]]).clip(0, 64))
    maps = np.array(maps)
    s = M.localization_summary(M.localization_ious(maps, gts), np.ones(12, bool))
    expected = brute_force_box_accuracy(maps, gts, M.DEFAULT_THRESHOLDS)
    assert len(set(expected)) > 3       # a curve that changes with the threshold: something to find
    assert np.array_equal(s["box_acc_curve"], expected)
    assert s["max_box_acc"] == expected.max()
    assert s["gt_known@0.2"] == expected[20] and s["gt_known@0.15"] == expected[15]


def test_pointing_game_tolerance():
    gt = [np.array([[100, 100, 150, 150.]])]
    def at(x, y):
        m = np.zeros((224, 224), np.float32)
        m[y, x] = 1
        return m[None]
    assert M.pointing_game(at(120, 120), gt)[0]           # inside
    assert M.pointing_game(at(165, 120), gt)[0]           # 15 px right of the box
    assert not M.pointing_game(at(166, 120), gt)[0]       # 16 px
    assert not M.pointing_game(at(162, 162), gt)[0]       # 12 px in x and y: 17 px away
    assert M.pointing_game(at(166, 120), gt, tolerance=16.0)[0]


# --- faithfulness and sanity -------------------------------------------------------------------

class QuadrantModel(torch.nn.Module):
    """Class 0's logit is the mean of the top-left quadrant's first channel (scaled), class 1's
    a constant: removing the quadrant is what lowers class 0's probability."""
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0, :16, :16].mean((1, 2)) * self.scale
        return torch.stack([q, torch.full_like(q, 4.0)], 1)


def test_deletion_auc_of_perfect_map_below_reversed_map():
    model = QuadrantModel()
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, :16, :16] = 3.0       # a bright quadrant: blur, mean and zero all dim it
    perfect = rect_map(32, 32, (0, 0, 16, 16))
    maps = np.stack([perfect, 1 - perfect])
    for substrate in ("zero", "mean", "blur"):
        c = M.deletion_insertion_curves(model, x, maps, [0, 0], n_steps=8, substrate=substrate,
                                        batch_size=5)
        assert c["deletion"].shape == (2, 9) and len(c["fraction"]) == 9
        d, i = M.auc(c["deletion"], c["fraction"]), M.auc(c["insertion"], c["fraction"])
        assert d[0] < d[1] and i[0] > i[1], substrate
    assert np.allclose(c["deletion"][:, 0], c["insertion"][:, -1])   # both: the intact image


def test_deletion_curves_on_a_cpu_run_in_row_chunks_with_the_same_probabilities(monkeypatch):
    """The forward of each batch of (image, step) pairs runs in the rows chip_fast's own CPU
    forward takes (chip_fast.models.row_chunks), with the whole batch's probabilities."""
    from chip_fast.models import row_chunks
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    seen = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda t: seen.append(len(t)) or real(t))
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 1)          # one row per chunk
    chunked = M.deletion_insertion_curves(model, x, maps, [0, 1, 2], n_steps=4, batch_size=8)
    assert set(seen) == {1}
    monkeypatch.setattr(M, "model_rows", lambda model, x: None)   # whole batches of 8
    whole = M.deletion_insertion_curves(model, x, maps, [0, 1, 2], n_steps=4, batch_size=8)
    assert 8 in seen
    for mode in ("deletion", "insertion"):
        np.testing.assert_allclose(chunked[mode], whole[mode], rtol=1e-5, atol=1e-6)


def test_spearman_and_randomized_copy():
    a = np.arange(20, dtype=float).reshape(2, 10)
    assert np.allclose(M.spearman_rows(a, a), 1)
    assert np.allclose(M.spearman_rows(a, -a), -1)
    assert np.isnan(M.spearman_rows(np.ones((1, 5)), a[:1, :5]))[0]
    import torchvision
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    rnd, names = M.randomized_copy(model, 2)
    assert names == ["features.18", "classifier.1"]
    assert not torch.equal(rnd.classifier[1].weight, model.classifier[1].weight)
    assert not torch.equal(rnd.features[18][0].weight, model.features[18][0].weight)
    assert torch.equal(rnd.features[17].conv[0][0].weight, model.features[17].conv[0][0].weight)
