"""What a distil-until-stable job keeps of a class group's views between stages: each view's
unit input and its terms (baseline, slopes) come from batches fixed by the views alone, so the
unit that first needs a view, or whether the budget kept it, changes nothing."""
from __future__ import annotations

import pytest
import torch

from chip_fast.distill.stage_prefixes import StagePrefixes

VIEWS = {0: 5, 1: 3}                              # views per class; chunks of 4 consecutive views
CACHE = {(0, 1): {"x": torch.tensor(100.0)}}      # a view the fill statistics pass kept


def _run(orders: list[list[tuple[int, int]]], budget: int):
    stage, computed, derived, out = StagePrefixes(4, budget), [], [], {}
    stage.start_group(0)

    def load(keys, futures):
        return torch.tensor([10.0 * c + v for c, v in keys])

    def compute(views, chunk):
        computed.append(tuple(chunk))
        return {"x": views.clone()}

    def derive(acts, keys):
        derived.append(tuple(keys))
        # a term that depends on its batch, as a batched float computation may
        return {"t": acts["x"] * len(keys) + acts["x"].sum()}

    for keys in orders:
        inputs, terms = stage.inputs(keys, VIEWS, CACHE, ([], None), load, compute, derive)
        for k, x, t in zip(keys, inputs["x"], terms["t"]):
            out[k] = (float(x), float(t))
    return computed, derived, out


@pytest.mark.parametrize("budget", [2**20, 0])
def test_a_view_s_terms_come_from_one_batch_whichever_unit_asks_first(budget):
    _, first, a = _run([[(0, 2)], [(0, 1), (0, 4), (1, 0)], [(0, 2), (1, 0)]], budget)
    _, second, b = _run([[(1, 2), (0, 4), (0, 0)], [(0, 1), (0, 2), (1, 0)]], budget)
    # each batch once, however often its views are asked for and whether they were kept
    want = [((0, 0), (0, 2), (0, 3)), ((0, 1),), ((0, 4),), ((1, 0), (1, 1), (1, 2))]
    assert sorted(first) == sorted(second) == want
    assert a.keys() & b.keys() == {(0, 1), (0, 2), (0, 4), (1, 0)}
    for k in a.keys() & b.keys():
        assert a[k] == b[k], k
    assert a[(0, 1)] == (100.0, 200.0)        # the kept input, in a batch of its own
    assert a[(0, 2)] == (2.0, 2.0 * 3 + 0 + 2 + 3)   # the rest of its chunk


def test_views_the_budget_could_not_keep_are_computed_again_in_the_same_chunk():
    orders = [[(0, 2)], [(0, 3)]]
    computed, _, _ = _run(orders, 0)
    assert computed == [((0, 0), (0, 1), (0, 2), (0, 3))] * 2
    computed, _, _ = _run(orders, 2**20)
    assert computed == [((0, 0), (0, 1), (0, 2), (0, 3))]
