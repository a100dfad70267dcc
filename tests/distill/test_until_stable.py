"""Distil until stable (``until_stable``): a class stops where a stage of samples ends once the
agreement its sums predict reaches the target; the file says where each class stopped, a class
stopped after the first stage has the weights of a plain run of that size, and a killed, a
refitted or a torchrun job gives the same importance."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import chip_fast
from chip_fast.distill.run import distill_all_classes, stability_summary
from chip_fast.distill.runner import UnitRunner
from chip_fast.importance.file import ImportanceFileError
from tests.distill.distributed_worker import LAYERS, UNTIL_STABLE, make_data, make_model

SAMPLED = "features.3"   # features.5's tail is affine: exact, stable by construction


def run(**changes):
    with torch.inference_mode(False):
        return distill_all_classes(make_model(), make_data(), LAYERS, progress=False,
                                   **{**UNTIL_STABLE, **changes})


@pytest.fixture(scope="module")
def stable():
    return run()


def test_stable_classes_stop_early_and_the_file_says_where(stable, tmp_path):
    counts = stable.settings["samples_reached"]
    assert set(counts) == {2048, 4096}, counts    # some stop, some run to the cap
    a = stable.agreement[SAMPLED]
    for i, n in enumerate(counts):
        if n < 4096:
            assert a[i] >= 0.95, (i, float(a[i]))
    assert stable.settings["until_stable"] == 0.95
    assert torch.equal(stable.agreement["features.5"], torch.ones(8, dtype=torch.float64))
    again = chip_fast.load_importance(stable.save(tmp_path / "imp.chip"))
    assert again.settings["samples_reached"] == counts
    torch.testing.assert_close(again.agreement[SAMPLED], a)
    summary = stability_summary(stable)
    assert f"{counts.count(2048)} of 8 classes stopped early" in summary, summary
    assert "or --until-stable" not in summary   # it already was


def test_a_class_stopped_after_the_first_stage_is_a_plain_run_of_that_size(stable):
    plain = run(samples_per_class=2048, until_stable=None)
    counts = stable.settings["samples_reached"]
    for i, c in enumerate(stable.classes):
        if counts[i] == 2048:
            for layer in LAYERS:
                assert torch.equal(stable.weights[layer][c], plain.weights[layer][c]), (c, layer)
            assert stable.agreement[SAMPLED][i] == plain.agreement[SAMPLED][i]
        else:   # why it went on
            assert plain.agreement[SAMPLED][i] < 0.95


def test_killed_job_resumes_to_the_identical_importance(stable, tmp_path, monkeypatch):
    ckpt, real, calls = tmp_path / "job.ckpt", UnitRunner.launch, {"n": 0}

    def dies(self, *args):
        calls["n"] += 1
        if calls["n"] > 11:    # after some groups' first stop decisions
            raise KeyboardInterrupt("killed")
        return real(self, *args)

    monkeypatch.setattr(UnitRunner, "launch", dies)
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=ckpt, checkpoint_every=0)
    monkeypatch.setattr(UnitRunner, "launch", real)
    resumed = run(checkpoint=ckpt)
    assert resumed.settings["samples_reached"] == stable.settings["samples_reached"]
    for layer in LAYERS:
        assert torch.equal(resumed.weights[layer], stable.weights[layer])
        assert torch.equal(resumed.sum_zy[layer], stable.sum_zy[layer])


def test_refits_and_checks_use_each_class_s_own_count(stable):
    again = stable.refit(UNTIL_STABLE.get("alpha", 0.1))
    for layer in LAYERS:
        torch.testing.assert_close(again.weights[layer], stable.weights[layer], rtol=1e-6,
                                   atol=1e-9)
    chosen = stable.refit("heldout")
    assert len(chosen.settings["alpha_chosen"][SAMPLED]) == 8
    assert torch.isfinite(stable.fit_quality()[SAMPLED]).all()
    counts = torch.tensor(stable.settings["samples_reached"], dtype=torch.float64)
    a = stable.agreement[SAMPLED]
    torch.testing.assert_close(stable.samples_needed(0.99)[SAMPLED],
                               counts * 0.99 * (1 - a) / (a * 0.01))


def test_bad_targets_and_counts_are_refused(stable, tmp_path):
    with pytest.raises(ValueError, match="until_stable must be an agreement"):
        run(until_stable=1.5)
    with pytest.raises(ValueError, match="folds >= 2"):
        run(folds=1)
    with pytest.warns(UserWarning, match="no class can stop"):
        run(samples_per_class=2048, samples_per_unit=1024)
    bad = dataclasses.replace(stable, settings={**stable.settings,
                                                "samples_reached": [2048] * 7})
    path = bad.save(tmp_path / "bad.chip")
    with pytest.raises(ImportanceFileError, match="samples_reached"):
        chip_fast.load_importance(path)


@pytest.mark.parametrize("design", ["independent", "orthogonal"])
def test_every_stage_spreads_a_class_s_views_evenly(design):
    from chip_fast.data.sources import ViewPlan
    from chip_fast.distill.plan import stage_ends
    stages = stage_ends(16384, 0.95, folds=4)
    assert stages == (2048, 4096, 8192, 16384)
    assert stage_ends(16384, None, folds=4) == (16384,)
    plan = ViewPlan(16384, {0: 300}, design, stages)
    views = plan.view_of(0, torch.arange(16384))
    for start, end in zip((0,) + stages[:-1], stages):
        count = torch.bincount(views[start:end], minlength=300)
        assert int(count.max() - count.min()) <= 2, (start, end)     # one pair apart at most
    # One stage is the schedule of a job that never stops early.
    whole = ViewPlan(4096, {0: 300}, design).view_of(0, torch.arange(4096))
    assert torch.equal(whole, ViewPlan(4096, {0: 300}, design, (4096,)).view_of(0, torch.arange(4096)))


def test_each_view_s_prefix_and_terms_run_once_however_many_stages(monkeypatch):
    """Every stage covers every view again; the group's views are kept between stages, and so
    are their baselines and slopes."""
    from chip_fast.distill.view_terms import ViewTerms
    from chip_fast.models.split import SplitModel
    real, rows = SplitModel.run_prefix, []
    terms = {"baseline": [], "slopes": []}

    def counted(self, x, dtype=None):
        rows.append(len(x))
        return real(self, x, dtype)

    def counting(name):
        method = getattr(ViewTerms, name)

        def wrapped(self, layer, acts, *args):
            terms[name].append((layer, len(acts)))
            return method(self, layer, acts, *args)
        return wrapped

    monkeypatch.setattr(SplitModel, "run_prefix", counted)
    for name in terms:
        monkeypatch.setattr(ViewTerms, name, counting(name))
    imp = run(until_stable=0.9999, fill_stats_views=1)   # never stops: both stages run
    assert imp.settings["samples_reached"] == [4096] * 8
    # after the job's probe and the fill statistics pass (a view each; the atlas measures its
    # patch side on that first view, once: a pass without gradients picks 4 live channels, a
    # pass with them takes the 4 rows): each class's chunk of its 3 views once, though both
    # stages use every view
    assert rows == [1, 1, 1, 4] + [3] * 8
    # the sampled layer's terms of each of the 24 views once, in the order units first need
    # them: class 0's view that the fill statistics pass kept in a batch of its own, the rest of
    # its chunk in another, every other class's chunk whole
    for name, calls in terms.items():
        assert {layer for layer, _ in calls} == {SAMPLED}, name
        assert sorted(n for _, n in calls) == [1, 2] + [3] * 7, (name, calls)
