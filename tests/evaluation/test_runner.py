"""``chip_fast.evaluation.runner.evaluate``: every method scored on the same images, a failing
method reported beside the others, results written as JSON and markdown."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from chip_fast.evaluation.dataset import LocSample
from tests.evaluation.helpers import rect_map


class GapToy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.classifier = torch.nn.Sequential(torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def test_evaluate_writes_results(tmp_path):
    from chip_fast.evaluation import EvalSettings, evaluate
    from chip_fast.evaluation.peers import cam
    torch.manual_seed(0)
    model = GapToy().eval()
    data = [LocSample(f"im{i}", torch.randn(3, 32, 32), i % 3, np.array([[4, 4, 20, 24.]]))
            for i in range(5)]

    def oracle(model, images, classes):
        return np.stack([rect_map(32, 32, (4, 4, 20, 24))] * len(images))
    oracle.layer = "-"

    def broken(model, images, classes):
        raise RuntimeError("no maps today")

    res = evaluate(model, {"oracle": oracle, "cam": cam("features"), "broken": broken}, data,
                   tmp_path, EvalSettings(batch_size=2, faithfulness_limit=3, faithfulness_steps=4,
                                          sanity_limit=3, sanity_top_blocks=1), plots=False,
                   log=lambda s: None)
    r = res["methods"]["oracle"]
    assert r["gt_known@0.2"] == r["max_box_acc"] == r["max_box_acc_v2"] == r["pointing"] == 1.0
    assert len(r["deletion_curve"]) == 5 and r["sanity_spearman"] == pytest.approx(1.0)
    assert "error" in res["methods"]["broken"] and "no maps today" in res["methods"]["broken"]["error"]
    assert res["methods"]["cam"]["layer"] == "features" and res["sanity_randomized_blocks"] == ["classifier.0"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["n_images"] == 5 and saved["faithfulness_images"] == 3
    md = (tmp_path / "results.md").read_text()
    assert "| oracle | - | 1.000 |" in md and "MaxBoxAccV2" in md and "error: RuntimeError" in md
