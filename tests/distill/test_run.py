"""``chip_fast.distill_all_classes`` (``chip_fast.distill.run``): a planted support and its
signs recovered with every fill, the same seed giving the same file, a subset of classes, bad
requests refused, and the default layers announced."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import chip_fast


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
