"""Benchmark of convolutions fused with their activations on a CPU
(``chip_fast.models.cpu_fusion``) against the same fx modules unfused, as the engine ran them
before: MobileNetV2 cut at its default layers, (a) the prefix on one unit's 38 views at
224 x 224 in float32 (in chunks of rows, both sides), (b) the tail after the 14x14 layer's
depthwise chain on a batch of 64 perturbed maps, in the tails' dtype (bfloat16 where the CPU
multiplies it in hardware), one thread. Both sides are checked to give the same values before
they are timed.

    python -m pytest benchmarks/test_cpu_fusion.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from chip_fast.distill.chain_per_view import chain_per_view
from chip_fast.distill.settings import cpu_has_native_bf16
from chip_fast.distill.tails import TailRunner
from chip_fast.models import cpu_fusion
from chip_fast.models.split import SplitModel

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.skipif(not cpu_fusion.available(), reason="this PyTorch has no oneDNN")

LAYER = "features.14.conv.0"
_inputs: dict[str, object] = {}


def _setup() -> dict[str, object]:
    if not _inputs:
        torch.manual_seed(0)   # timing does not depend on the weights' values
        split = SplitModel(torchvision.models.mobilenet_v2().eval(), [LAYER, "features.18"])
        x = torch.randn(38, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = split.run_prefix(x)   # binds the layouts
            acts = split.activation(out, LAYER)
            chain = chain_per_view(split, LAYER, acts, "zero")
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
            runner = TailRunner(split, LAYER, torch.device("cpu"), dtype, tail=chain.rest)
            maps = chain.maps(acts)
            rows = torch.randint(0, len(maps), (64,), generator=torch.Generator().manual_seed(1))
            pert = maps[rows].to(dtype).contiguous(memory_format=torch.channels_last)
        _inputs.update(split=split, x=x, runner=runner, pert=pert)
    return _inputs


@pytest.mark.parametrize("impl", ["fused", "unfused"])
def test_prefix_fusion(benchmark, impl):
    benchmark.group = "prefix cpu mobilenet_v2 38x3x224x224 float32"
    torch.set_num_threads(1)   # load-robust: one core, no thread-pool noise
    s = _setup()
    split, x = s["split"], s["x"]
    with torch.inference_mode():
        fused, plain = split._run(x), split._run(x, fuse=False)
        assert split._cpu_prefix.fused is not None
        for got, want in zip(fused, plain):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        benchmark.pedantic(lambda: split._run(x, fuse=impl == "fused"), rounds=8,
                           warmup_rounds=1)


@pytest.mark.parametrize("impl", ["fused", "unfused"])
def test_tail_fusion(benchmark, impl):
    s = _setup()
    runner, pert = s["runner"], s["pert"]
    benchmark.group = f"tail cpu mobilenet_v2 after {LAYER}'s chain 64 rows {pert.dtype}"
    torch.set_num_threads(1)
    with torch.inference_mode():
        got = runner(pert, {}, None)
        assert runner._cpu.fused is not None
        with runner._autocast():
            want = runner.module(pert).float()
        rel = float((got - want).norm() / want.norm())
        assert rel < (1e-5 if pert.dtype == torch.float32 else 3e-2), rel

        def run():
            with runner._autocast():
                module = runner._cpu.fused if impl == "fused" else runner.module
                return module(pert).float()
        benchmark.pedantic(run, rounds=20, warmup_rounds=2)
