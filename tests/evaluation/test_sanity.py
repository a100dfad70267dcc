"""The sanity check of CHIP as a whole (``chip_fast.evaluation.sanity``): the randomised copy is
distilled again with the trained importance's settings, and its maps use that importance. Below
the randomised blocks the activations do not change, so a kept importance gives the identical
map (rho 1 by construction) while the re-distilled one must not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import chip_fast
from chip_fast.evaluation import EvalSettings, LocSample, chip_method, evaluate
from chip_fast.evaluation.metrics import randomized_copy
from chip_fast.evaluation.sanity import Redistill, replay_settings

LAYER = "features.1"   # below the one randomised block (the classifier)
SETTINGS = dict(samples_per_class=64, seed=3, alpha=0.05, folds=2)


@pytest.fixture
def trained(tiny_net, tiny_data):
    return chip_fast.distill_all_classes(tiny_net, tiny_data, [LAYER], progress=False,
                                         classes=[0, 1, 2], **SETTINGS)


def test_replay_settings_repeat_the_run(trained):
    s = replay_settings(trained)
    assert {k: s[k] for k in SETTINGS} == SETTINGS
    assert "atlas" not in s and "views_per_class" not in s and "estimators" not in s
    broken = chip_fast.Importance(**{**trained.__dict__, "settings": {"seed": 0}})
    with pytest.raises(ValueError, match="records no .*samples_per_class"):
        replay_settings(broken)


def test_redistill_is_the_distillation_of_the_randomised_model(tiny_net, tiny_data, trained):
    rnd, _ = randomized_copy(tiny_net, ["classifier"], seed=5)
    redistill = Redistill(trained, tiny_data)
    got = redistill(rnd)
    want = chip_fast.distill_all_classes(rnd, tiny_data, [LAYER], progress=False,
                                         classes=[0, 1, 2], **SETTINGS)
    assert got.classes == [0, 1, 2] and got.layers == [LAYER]
    assert torch.equal(got.weights[LAYER], want.weights[LAYER])
    assert not torch.equal(got.weights[LAYER], trained.weights[LAYER])
    assert redistill(rnd) is got   # one distillation per model, shared by the map functions
    again, _ = randomized_copy(tiny_net, ["classifier"], seed=5)
    assert redistill(again) is got   # a new copy with the same weights: the same importance


def test_evaluate_reports_the_re_distilled_sanity_check(tiny_net, tiny_data, trained, tmp_path):
    calls = []

    def counting(*args, **kw):
        calls.append(args[0])
        return chip_fast.distill_all_classes(*args, **kw)
    g = torch.Generator().manual_seed(7)
    data = [LocSample(f"im{i}", torch.rand(3, 16, 16, generator=g), i % 3,
                      np.array([[2, 2, 12, 12.]])) for i in range(6)]
    redistill = Redistill(trained, tiny_data, distill=counting)
    methods = {"kept": chip_method(trained, [LAYER]),
               "re-distilled": chip_method(trained, [LAYER], redistill=redistill),
               "refined re-distilled": chip_method(trained, None, redistill=redistill)}
    res = evaluate(tiny_net, methods, data, tmp_path,
                   EvalSettings(batch_size=3, faithfulness_limit=0, sanity_limit=6,
                                sanity_top_blocks=1), plots=False, log=lambda s: None)
    kept, again = res["methods"]["kept"], res["methods"]["re-distilled"]
    assert res["sanity_randomized_blocks"] == ["classifier"]
    assert kept["sanity_spearman"] == pytest.approx(1.0)
    assert kept["sanity_importance"] == "importance kept"
    assert again["sanity_importance"] == "re-distilled" and again["sanity_spearman"] < 0.99
    # the box metrics are the trained importance's either way
    assert again["max_box_acc"] == kept["max_box_acc"]
    assert len(calls) == 1 and getattr(calls[0], "chip_fast_randomized_blocks") == ["classifier"]
    md = (tmp_path / "results.md").read_text()
    assert "1.000 †" in md and "re-distil it for the whole method" in md
