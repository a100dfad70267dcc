"""The channel-ablation check of an importance (``chip_fast.evaluation.ablation``) on a tiny
model whose tail after the layer is global average pooling into a linear head: there the class
logit lost by zeroing channels S is exactly sum over k in S of W_ck * mean(A_k), and
gradient x activation of channel k is exactly W_ck * mean(A_k), so every number has a
closed form to check against."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chip_fast.evaluation.ablation import gradient_x_activation, logit_drops, ranking

LAYER = "features.2"   # TinyNet: features.2 -> AdaptiveAvgPool2d -> Linear


def _contributions(net, x: torch.Tensor, classes) -> torch.Tensor:
    """(B, K): W_ck * mean over positions of A_k, photo by photo, c the photo's class."""
    with torch.no_grad():
        a = net.features(x).mean((2, 3))
    return net.classifier.weight[torch.as_tensor(classes)].detach() * a


@pytest.fixture
def photos():
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    return x, [0, 1, 2] * 4


def test_gradient_x_activation_is_the_linear_contribution(tiny_net, photos):
    x, labels = photos
    got = gradient_x_activation(tiny_net, LAYER, x, labels, batch_size=5)
    contrib = _contributions(tiny_net, x, labels)
    assert sorted(got) == [0, 1, 2]
    for c in got:
        rows = [i for i, l in enumerate(labels) if l == c]
        assert torch.allclose(got[c], contrib[rows].mean(0), atol=1e-5)


def test_logit_drops_match_the_closed_form(tiny_net, photos):
    x, labels = photos
    contrib = _contributions(tiny_net, x, labels)
    best = ranking(gradient_x_activation(tiny_net, LAYER, x, labels))
    worst = {c: r[::-1] for c, r in best.items()}
    ks = (1, 5)
    res = logit_drops(tiny_net, LAYER, x, labels, {"gxa": best, "worst": worst}, ks=ks,
                      random_draws=400, batch_size=5)
    assert res["n_images"] == 12 and res["classes"] == [0, 1, 2]
    k_all = contrib.shape[1]
    for k in ks:
        for name, r in (("gxa", best), ("worst", worst)):
            expected = np.mean([float(contrib[i, r[labels[i]][:k]].sum()) for i in range(12)])
            assert res["drop"][name][k] == pytest.approx(expected, abs=1e-5)
            # photo by photo, in class order (0, 0, 0, 0, 1, ...)
            order = sorted(range(12), key=lambda i: labels[i])
            assert res["per_photo"][name][k] == pytest.approx(
                [float(contrib[i, r[labels[i]][:k]].sum()) for i in order], abs=1e-5)
        # a random k-set removes k/K of the whole contribution in expectation; the mean of 400
        # draws is within a few of its standard errors of that
        expected = float(contrib.sum(1).mean()) * k / k_all
        tolerance = 4 * res["random_draw_sd"][k] / np.sqrt(400)
        assert abs(res["drop"]["random"][k] - expected) < tolerance
        # on the photos it was measured on, the first-order ranking is the best linear one
        assert res["drop"]["gxa"][k] > res["drop"]["random"][k] > res["drop"]["worst"][k]


def test_photos_of_classes_a_ranking_lacks_are_left_out(tiny_net, photos):
    x, labels = photos
    full = ranking(gradient_x_activation(tiny_net, LAYER, x, labels))
    res = logit_drops(tiny_net, LAYER, x, labels, {"a": full, "b": {0: full[0], 2: full[2]}},
                      ks=(1,), random_draws=2)
    assert res["classes"] == [0, 2] and res["n_images"] == 8
    with pytest.raises(ValueError, match="no photo shows a class"):
        logit_drops(tiny_net, LAYER, x, labels, {"a": {5: full[0]}}, ks=(1,))
