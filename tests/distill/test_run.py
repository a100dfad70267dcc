import pytest
import torch
from torch import nn

import chip_fast
from chip_fast.data.sources import make_view
from chip_fast.distill.job import DistillJob
from chip_fast.ops.perturb import perturb_reference
from chip_fast.distill.settings import DistillSettings
from chip_fast.distill.tails import response_of
from chip_fast.distill.runner import UnitRunner


class Planted(nn.Module):
    """Class scores depend only on known channels of the interpreted layer ``body``."""

    def __init__(self, effects: torch.Tensor) -> None:
        super().__init__()
        self.body = nn.Conv2d(effects.shape[1], effects.shape[1], 1, bias=False)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(effects.shape[1])[:, :, None, None])
        self.head = nn.Linear(effects.shape[1], effects.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(effects)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def planted_problem(classes=6, channels=24, per_class=3, images_per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    effects = torch.zeros(classes, channels)
    for c in range(classes):
        support = torch.randperm(channels, generator=g)[:per_class]
        signs = torch.where(torch.rand(per_class, generator=g) < 0.5, -1.0, 1.0)
        effects[c, support] = signs * (1 + torch.rand(per_class, generator=g))
    labels = torch.arange(classes).repeat_interleave(images_per_class)
    images = 0.5 * torch.randn(len(labels), channels, 6, 6, generator=g)
    # An image of class c shows its class's channels strongly, as real evidence channels do.
    images += 3.0 * (effects[labels] != 0).float()[:, :, None, None]
    return Planted(effects).eval(), effects, images, labels


@pytest.mark.parametrize("fill", ["noise", "zero", "mean"])
def test_planted_support_and_signs_are_recovered(fill):
    model, effects, images, labels = planted_problem()
    imp = chip_fast.distill_all_classes(model, (images, labels), ["body"], samples_per_class=512,
                                        seed=3, fill=fill, progress=False)
    w = imp.weights["body"]
    truth, found = effects != 0, w != 0
    tp = (truth & found).sum().item()
    precision, recall = tp / found.sum().item(), tp / truth.sum().item()
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert torch.equal(torch.sign(w[truth & found]), torch.sign(effects[truth & found]))


def test_same_seed_same_file_and_other_seed_differs(tiny_net, tiny_data, tmp_path):
    run = lambda seed: chip_fast.distill_all_classes(
        tiny_net, tiny_data, ["features.1"], samples_per_class=48, seed=seed, progress=False,
        samples_per_unit=16, classes_per_unit=4)
    a, b, c = run(5).save(tmp_path / "a.chip"), run(5).save(tmp_path / "b.chip"), run(6).save(tmp_path / "c.chip")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("baseline", ["none", "view"])
def test_any_sample_regenerates_alone(tiny_net, tiny_data, baseline):
    """The batched job's sums equal a naive loop that rebuilds every sample on its own (with
    baseline="view", minus p_keep times the unperturbed response of the sample's view)."""
    settings = DistillSettings(samples_per_class=20, seed=11, augment=3, samples_per_unit=8,
                               classes_per_unit=2, batch_size=7, fill="noise",
                               baseline=baseline)
    job = DistillJob(tiny_net, tiny_data, ["features.1"], settings, classes=[1, 4])
    job.measure_fill_statistics()
    job.run_pending(job.state.pending())
    images, labels = tiny_data
    n_views = 2 * 3  # 2 images per class x 3 views
    for slot, c in enumerate([1, 4]):
        own = images[labels == c]
        folds = settings.folds
        szy = torch.zeros(folds, job.plan.channels["features.1"], dtype=torch.float64)
        syy = torch.zeros(folds, dtype=torch.float64)
        for i in range(settings.samples_per_class):
            v = i * n_views // settings.samples_per_class
            x = make_view(own[v % 2], c, v, 2, settings.seed)[None]
            with torch.no_grad():
                a = tiny_net.features[1](tiny_net.features[0](x))
                pert, z = perturb_reference(a, torch.tensor([0]), torch.tensor([c]), torch.tensor([i]),
                                            seed=11, p_keep=0.5, fill="noise",
                                            mu=job.state.mu["features.1"],
                                            sigma=job.state.sigma["features.1"])
                logits = tiny_net.classifier(torch.flatten(tiny_net.pool(tiny_net.features[2](pert)), 1))
            y = response_of(logits, torch.tensor([c]), "logit")
            if baseline == "view":
                with torch.no_grad():
                    y = y - settings.p_keep * response_of(tiny_net(x), torch.tensor([c]),
                                                          "logit")
            szy[i % folds] += z[0].double() * y.double()
            syy[i % folds] += y.double()[0] ** 2
        torch.testing.assert_close(job.state.sum_zy["features.1"][slot], szy, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(job.state.sum_yy["features.1"][slot], syy, rtol=1e-5, atol=1e-6)


def test_killed_job_resumes_to_the_identical_result(tiny_net, tiny_data, tmp_path, monkeypatch):
    kwargs = dict(layers=["features.1", "features.2"], samples_per_class=48, seed=2,
                  progress=False, samples_per_unit=16, classes_per_unit=2)
    whole = chip_fast.distill_all_classes(tiny_net, tiny_data, **kwargs)
    ckpt = tmp_path / "job.ckpt"
    real = UnitRunner.launch
    calls = {"n": 0}

    def dies_after_four(self, *args):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("killed")
        return real(self, *args)

    monkeypatch.setattr(UnitRunner, "launch", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt, checkpoint_every=0, **kwargs)
    assert ckpt.exists()
    monkeypatch.setattr(UnitRunner, "launch", real)
    resumed = chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt, **kwargs)
    for layer in whole.layers:
        assert torch.equal(whole.weights[layer], resumed.weights[layer])
    # A checkpoint of a different job is refused.
    with pytest.raises(ValueError, match="another job"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt,
                                      **{**kwargs, "seed": 3})


def test_classes_subset_and_bad_requests(tiny_net, tiny_data):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], classes=[2, 5],
                                        samples_per_class=16, progress=False)
    assert imp.classes == [2, 5] and imp.weights["features.2"].shape == (6, 16)
    assert imp.weights["features.2"][[0, 1, 3, 4]].abs().sum() == 0
    with pytest.raises(ValueError, match="no images"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], classes=[7], progress=False)
    with pytest.raises(ValueError, match="samples_per_class"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], samples_per_class=1)
    with pytest.raises(ValueError, match="fill"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], fill="blur")


def test_default_layers_are_announced(tiny_net, tiny_data, caplog):
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, None, samples_per_class=8,
                                        progress=False)
    assert imp.layers == ["features.1", "features.2"]
    assert "default layers" in caplog.text
