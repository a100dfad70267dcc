"""``chip_fast.explain`` and ``explain_available`` (``chip_fast.maps.explain``) on a file that
holds some classes: requests checked before any forward pass, what cannot be explained named,
"top-distilled" the best class among those distilled."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast.maps.explain import ClassNotDistilledError, explain_available


@pytest.fixture
def partial(tiny_net, tiny_data):
    """An importance of classes 0 and 1 only, and images with their top-1 classes."""
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], classes=[0, 1],
                                        samples_per_class=16, progress=False)
    with torch.no_grad():
        logits = tiny_net(tiny_data[0])
    return imp, tiny_data[0], logits


def test_explain_checks_given_classes_before_any_forward(tiny_net, partial):
    imp, images, _ = partial
    calls = []
    hook = tiny_net.features.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="class 6 does not exist: the model has 6 classes"):
        chip_fast.explain(tiny_net, imp, images[:2], [0, 6])
    with pytest.raises(ClassNotDistilledError, match=r"image 1 -> class 4") as e:
        chip_fast.explain(tiny_net, imp, images[:2], [0, 4])
    hook.remove()
    assert e.value.rows == {1: 4} and "top-distilled" in str(e.value) and not calls


def test_explain_available_names_what_it_skipped(tiny_net, partial):
    imp, images, logits = partial
    top1 = logits.argmax(1)
    ex = explain_available(tiny_net, imp, images)
    assert ex.rows == [i for i, c in enumerate(top1.tolist()) if c in (0, 1)]
    assert set(ex.skipped) == set(range(len(images))) - set(ex.rows)
    assert all("is not distilled" in why for why in ex.skipped.values())
    assert ex.maps.shape == (len(ex.rows), 16, 16) and torch.equal(ex.classes, top1)
    if ex.skipped:   # the strict call refuses the same images, naming them
        with pytest.raises(ClassNotDistilledError, match="top-1 classes not distilled"):
            chip_fast.explain(tiny_net, imp, images)


def test_top_distilled_is_the_best_class_among_those_distilled(tiny_net, partial):
    imp, images, logits = partial
    best = torch.where(logits[:, 0] >= logits[:, 1], 0, 1)
    maps = chip_fast.explain(tiny_net, imp, images, "top-distilled")
    assert torch.equal(maps, chip_fast.explain(tiny_net, imp, images, best))
    with pytest.raises(ValueError, match="top-distilled"):
        chip_fast.explain(tiny_net, imp, images, "best")
