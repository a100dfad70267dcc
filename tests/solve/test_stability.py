"""How stable a fit is, from its per-fold sums (``chip_fast.solve.stability.stability``): the predicted
seed-to-seed agreement and the standard error of each weight are checked against what
independent seeds really do, and kept through a file and a refit."""
from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.solve.stability import _row_correlation


class Net(nn.Module):
    def __init__(self, classes: int = 4, k: int = 16) -> None:
        super().__init__()
        self.feat = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(k, k, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        return self.fc(self.deep(self.feat(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def runs():
    torch.manual_seed(5)
    model = Net().eval()
    g = torch.Generator().manual_seed(6)
    data = (torch.randn(24, 3, 6, 6, generator=g), torch.arange(24) % 4)
    # few samples for 16 channels: a fit with noise worth predicting
    return [chip_fast.distill_all_classes(model, data, ["feat", "deep"], samples_per_class=64,
                                          seed=s, progress=False, alpha=0.02)
            for s in range(8)]


def test_predicted_agreement_matches_what_seeds_do(runs):
    predicted = torch.stack([r.agreement["feat"] for r in runs]).mean(0)
    actual = torch.stack([_row_correlation(runs[i].weights["feat"].double(),
                                           runs[j].weights["feat"].double())
                          for i in range(len(runs)) for j in range(i)]).mean(0)
    # on average within 0.1, and on the safe side: a class said to be stable is
    assert abs(float(predicted.mean() - actual.mean())) < 0.1, (predicted, actual)
    assert (predicted <= actual + 0.05).all(), (predicted, actual)
    assert float(actual.mean()) < 0.98    # a case with noise to predict


def test_standard_errors_match_the_spread_over_seeds(runs):
    se = torch.stack([r.weight_se["feat"] for r in runs]).double().mean(0)
    spread = torch.stack([r.weights["feat"].double() for r in runs]).std(0)
    busy = spread > 1e-3     # channels the Lasso keeps in most runs
    ratio = statistics.median((se[busy] / spread[busy]).tolist())
    assert 0.7 < ratio < 1.5, ratio


def test_exact_layers_are_stable_by_construction(runs):
    assert torch.equal(runs[0].agreement["deep"], torch.ones(4, dtype=torch.float64))
    assert float(runs[0].weight_se["deep"].abs().max()) == 0.0


def test_stability_survives_the_file_and_follows_a_refit(runs, tmp_path):
    imp = runs[0]
    back = chip_fast.load_importance(imp.save(tmp_path / "s.chip"))
    torch.testing.assert_close(back.agreement["feat"], imp.agreement["feat"])
    torch.testing.assert_close(back.weight_se["feat"], imp.weight_se["feat"])
    top = chip_fast.top_channels(back, "feat", 0, n=3)
    assert all(t.se == float(imp.weight_se["feat"][0, t.channel]) for t in top)
    strict = imp.refit(0.5)
    assert not torch.equal(strict.weight_se["feat"], imp.weight_se["feat"])


def test_samples_needed_follows_spearman_brown(runs):
    imp = runs[0]
    a = imp.agreement["feat"].clone()
    a[:3] = torch.tensor([0.5, 0.0, float("nan")], dtype=a.dtype)
    odd = dataclasses.replace(imp, agreement={**imp.agreement, "feat": a})
    m = odd.samples_needed(0.8)["feat"]
    # 64 samples at r 0.5: 64 * 0.8 * 0.5 / (0.5 * 0.2) = 256 samples reach r 0.8
    assert float(m[0]) == pytest.approx(256.0)
    assert m[1] == float("inf") and torch.isnan(m[2])
    assert (odd.samples_needed(0.8)["deep"] == 0).all()          # exact: no samples
    with pytest.raises(ValueError, match="between 0 and 1"):
        imp.samples_needed(1.0)


def test_samples_needed_predicts_the_agreement_of_a_larger_run(runs):
    """The agreement at 4x the samples, predicted from the small runs, against what 4x the
    samples really give (two seeds)."""
    torch.manual_seed(5)
    model = Net().eval()
    g = torch.Generator().manual_seed(6)
    data = (torch.randn(24, 3, 6, 6, generator=g), torch.arange(24) % 4)
    big = [chip_fast.distill_all_classes(model, data, ["feat"], samples_per_class=256, seed=s,
                                         progress=False, alpha=0.02) for s in (0, 1)]
    measured = float(_row_correlation(big[0].weights["feat"], big[1].weights["feat"]).median())
    a = torch.stack([r.agreement["feat"] for r in runs]).mean(0)
    predicted = float((4 * a / (1 + 3 * a)).median())
    assert abs(predicted - measured) < 0.1, (predicted, measured)


def test_the_run_summary_says_how_many_samples_reach_the_target(runs):
    from chip_fast.distill.run import stability_summary
    text = stability_summary(runs[0])
    assert "feat: predicted seed agreement median r" in text and "--samples-per-class" in text
    assert "deep: exact" in text
    assert "or --until-stable 0.95" in text   # the other way to reach it


def test_the_run_summary_says_unbounded_where_a_class_cannot_reach_the_target(runs):
    """A class with agreement <= 0 needs an unknown count (inf): the line names how many, and
    no float-max figure is printed."""
    import copy
    from chip_fast.distill.run import stability_summary
    imp = copy.copy(runs[0])
    a = imp.agreement["feat"].clone()
    a[0] = -0.2
    imp.agreement = dict(imp.agreement) | {"feat": a}
    line = next(l for l in stability_summary(imp).splitlines() if "feat: predicted" in l)
    assert "1 with agreement <= 0: unbounded" in line and "every other class" in line
    assert max(len(w) for w in line.split()) < 30, line      # no 309-digit number
