"""Shared set-up of the kernel benchmarks (test_perturb, test_perturb_means, test_response_sums,
test_class_maps, test_prox): pytest-benchmark runs of each Triton kernel against its PyTorch
reference and the straightforward PyTorch a user would write (materialised masks from torch.rand,
per-class loops).

GPU only: on the CPU interpreter timings mean nothing, so importing this module skips the
benchmark module without CUDA. Sizes follow MobileNetV2 / VGG-like layers: K = 1280 channels at
7x7, 1000 classes. Groups: one per kernel and case; within a group, compare the `triton`,
`reference` and `naive` rows.
Run, from the repository root:  python -m pytest benchmarks/ --benchmark-json=results.json
"""
from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need CUDA (interpreter timings are meaningless)",
                allow_module_level=True)
pytest.importorskip("triton")
pytest.importorskip("pytest_benchmark")

DEV = torch.device("cuda")


def timed(benchmark, fn, *, rounds=None):
    """Benchmark ``fn`` with a device synchronisation inside the timed region."""
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    run()  # warm-up: Triton compilation, cuBLAS handles, caching allocator
    if rounds is None:
        return benchmark(run)
    return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
