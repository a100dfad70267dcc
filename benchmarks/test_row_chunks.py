"""Benchmark of the CPU prefix in chunks of rows (``chip_fast.models.row_chunks``) against the
same fx prefix called on the whole batch, as the engine called it before: MobileNetV2 cut at
its default layers (features.14.conv.0, features.18), one unit's 38 views at 224 x 224,
float32 channels-last, one thread, both sides unfused (``benchmarks/test_cpu_fusion.py`` times
the fusion). Both sides are checked to give the same activations before they are timed.

    python -m pytest benchmarks/test_row_chunks.py --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from chip_fast.models.split import SplitModel

pytest.importorskip("pytest_benchmark")

_split: dict[str, object] = {}


def _inputs() -> tuple[SplitModel, torch.Tensor]:
    if not _split:
        torch.manual_seed(0)   # timing does not depend on the weights' values
        model = torchvision.models.mobilenet_v2().eval()
        _split["split"] = SplitModel(model, ["features.14.conv.0", "features.18"])
        _split["x"] = torch.randn(38, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    return _split["split"], _split["x"]


@pytest.mark.parametrize("impl", ["chunks", "whole_batch"])
def test_row_chunks(benchmark, impl):
    benchmark.group = "prefix cpu mobilenet_v2 38x3x224x224"
    torch.set_num_threads(1)   # load-robust: one core, no thread-pool noise
    split, x = _inputs()
    with torch.inference_mode():
        whole = tuple(split.prefix(x))
        split.run_prefix(x)   # binds the layouts
        chunked = split._run(x, fuse=False)
        for want, got in zip(whole, chunked):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        fn = {"chunks": lambda: split._run(x, fuse=False),
              "whole_batch": lambda: split.prefix(x)}[impl]
        benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
