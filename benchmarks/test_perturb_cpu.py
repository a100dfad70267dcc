"""Benchmark of the perturbation on the CPU, where the engine runs no kernel: the product path
of ``chip_fast.ops.perturb`` (zero and mean fills of channels-last activations) vs
``perturb_reference`` vs the ``torch.where`` a user would write, on the engine's batch at
MobileNetV2 features.14.conv.0 (64 rows of 38 views, K 576 at 14x14, float32 channels-last,
zero fill). Each variant is checked against the reference before it is timed.

    python -m pytest benchmarks/test_perturb_cpu.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch

from chip_fast import rng
from chip_fast.ops.perturb import perturb, perturb_reference

pytest.importorskip("pytest_benchmark")


def _inputs():
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(38, 576, 14, 14, generator=g).contiguous(memory_format=torch.channels_last)
    t = 64
    view = torch.randint(0, 38, (t,), generator=g)
    classes, samples = torch.zeros(t, dtype=torch.long), torch.arange(t)
    return acts, view, classes, samples


def _where(acts, view, masks):
    return torch.where(masks[:, :, None, None], acts[view], torch.zeros(()))


@pytest.mark.parametrize("impl", ["product", "reference", "where"])
def test_perturb_cpu(benchmark, impl):
    benchmark.group = "perturb cpu K576_14x14_T64 zero fill"
    torch.set_num_threads(1)   # the engine's batches on one core: no thread-pool noise
    acts, view, classes, samples = _inputs()
    kw = dict(seed=5, p_keep=0.5, fill="zero", mu=torch.zeros(576), sigma=torch.ones(576),
              design="orthogonal", folds=4)
    masks = rng.keep_masks(5, samples, 576, 0.5, "orthogonal", 4)
    fn = {"product": lambda: perturb(acts, view, classes, samples, **kw)[0],
          "reference": lambda: perturb_reference(acts, view, classes, samples, **kw)[0],
          "where": lambda: _where(acts, view, masks)}[impl]
    assert torch.equal(fn(), perturb_reference(acts, view, classes, samples, **kw)[0])
    benchmark(fn)
