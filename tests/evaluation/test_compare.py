"""Paired bootstrap of two methods' per-photo outcomes (``chip_fast.evaluation.compare``):
known differences, intervals that cover the truth, the per-photo outcomes read back from
``evaluate``'s results, and refusals of what cannot be paired."""
from __future__ import annotations

import numpy as np
import pytest

from chip_fast.evaluation.compare import (compare_to, comparison_table, paired_bootstrap,
                                          per_photo)


def test_identical_methods_differ_by_nothing():
    a = np.array([1, 0, 1, 1, 0.])
    s = paired_bootstrap(a, a)
    assert s["diff"] == s["lo"] == s["hi"] == 0 and s["p_not_ahead"] == 1.0 and s["photos"] == 5


def test_interval_covers_the_mean_difference_and_shrinks_with_photos():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 800):
        a = (rng.random(n) < 0.65).astype(float)
        b = (rng.random(n) < 0.55).astype(float)
        s = paired_bootstrap(a, b, draws=4000)
        assert s["lo"] <= s["diff"] <= s["hi"]
        assert s["diff"] == pytest.approx(a.mean() - b.mean())
        widths.append(s["hi"] - s["lo"])
    # the interval's width falls as 1/sqrt(photos): 16x the photos, about a quarter of it
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.3)


def test_a_method_ahead_on_every_photo_it_differs_is_significant():
    a = np.ones(100)
    b = np.r_[np.zeros(20), np.ones(80)]
    s = paired_bootstrap(a, b)
    assert s["diff"] == pytest.approx(0.2) and s["lo"] > 0 and s["p_not_ahead"] == 0.0


def test_unpaired_outcomes_are_refused():
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_bootstrap(np.ones(3), np.ones(4))


def _results():
    return {"settings": {"iou_threshold": 0.5}, "top1_correct": [True, False, True, True],
            "methods": {"chip": {"iou_at_top1_threshold": [0.6, 0.7, 0.2, 0.9]},
                        "cam": {"iou_at_top1_threshold": [0.4, 0.8, 0.1, 0.5]},
                        "broken": {"error": "RuntimeError: no maps"}}}


def test_per_photo_outcomes_and_the_table():
    res = _results()
    got = per_photo(res, "chip")
    assert got["gt_known@0.2"].tolist() == [1, 1, 0, 1]
    assert got["top1_loc_acc"].tolist() == [1, 0, 0, 1]   # photo 2: the class is wrong
    comp = compare_to(res, "chip", draws=500)
    assert list(comp) == ["cam"]   # the broken method is left out
    assert comp["cam"]["gt_known@0.2"]["diff"] == pytest.approx(0.25)   # photo 0: 0.6 vs 0.4
    assert comp["cam"]["top1_loc_acc"]["diff"] == pytest.approx(0.25)
    md = comparison_table(comp, "chip")
    assert "| cam | +0.250 [" in md and "chip minus each method" in md
    del res["top1_correct"]   # results written before the per-photo correctness was kept
    assert set(compare_to(res, "chip", draws=10)["cam"]) == {"gt_known@0.2"}
    with pytest.raises(ValueError, match="no scores"):
        per_photo(res, "broken")
    res["settings"]["top1_threshold"] = 0.15
    with pytest.raises(ValueError, match="at threshold 0.15, not GT-known@0.2"):
        per_photo(res, "chip")
