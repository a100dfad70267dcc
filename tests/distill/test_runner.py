"""The hot loop (``chip_fast.distill.runner`` and the unit loop of ``job.run_pending``): what a
tail batch costs the host, counted with torch.profiler (tools/launch_count.py); the baseline
pass leaves the unit's activations alone; on CUDA the units are pipelined (the next one queued
and the one after decoding before a unit's sums are read)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chip_fast.distill.job import DistillJob
from chip_fast.distill.settings import DistillSettings
from tools.launch_count import per_batch


@pytest.mark.slow   # Triton's interpreter runs every kernel program in Python: ~15 s
def test_a_tail_batch_on_the_kernel_path_is_three_launches(monkeypatch):
    """The perturbation kernel, the tail (one CUDA-graph replay on a GPU), the response sums
    kernel, and no other device work: the sort, bucket bounds and gathers of the response sums
    are made once per unit, the response is gathered and the baseline subtracted inside the
    sums kernel, finiteness is read from the sums once per unit. Before: 41 aten ops per batch
    here (16 of them launching: sort, searchsorted, 3 index_select, gather, mul, sub,
    isfinite, all, not, or, 3 adds...), ~21 launches on a GPU. The one aten op left is the
    perturbation's output, which a GPU takes from the tail's graph instead. The view-slope
    control variate (the default) adds one launch, the gather of each row's class response: its
    sums run over the unit's batches at once when the unit ends (per batch they were 29 more
    launches)."""
    monkeypatch.setenv("CHIP_FAST_BACKEND", "triton")
    counts = per_batch("cpu", sizes=(16, 32), control="none")
    assert counts["triton_launches"] == 2
    assert counts["tail_calls"] == 1
    assert counts["launching_ops"] == 0
    assert counts["aten_ops"] == 1
    counts = per_batch("cpu", sizes=(16, 32))
    assert counts["triton_launches"] == 2 and counts["tail_calls"] == 1
    assert counts["launching_ops"] == 1 and counts["aten_ops"] <= 4


def test_host_ops_per_batch_on_the_pytorch_path(monkeypatch):
    """The CPU path draws the masks in PyTorch and sums with the reference. Antithetic masks
    ran PyTorch's Philox per batch (~140 of its ops; 174 aten ops per batch with the sums,
    torch 2.14); the orthogonal design keeps its per-block tables, made by Philox, across
    batches: 77. The view-slope control variate (the default) adds its per-batch sums: 110 (a
    few microseconds each against a tail batch of milliseconds)."""
    monkeypatch.setenv("CHIP_FAST_BACKEND", "torch")
    counts = per_batch("cpu", sizes=(16, 32), control="none")
    assert counts["tail_calls"] == 1 and counts["triton_launches"] == 0
    assert counts["aten_ops"] <= 80
    with_control = per_batch("cpu", sizes=(16, 32))
    assert with_control["tail_calls"] == 1 and with_control["aten_ops"] <= 115


class Doubler(nn.Module):
    """The tail starts with a non-idempotent in-place op, which fx sees as writing into the
    layer's activation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        a = self.conv(x)
        a.mul_(2.0)
        return self.head(torch.relu(a).mean((2, 3)))


def test_the_baseline_pass_leaves_the_units_activations_alone():
    torch.manual_seed(0)
    model = Doubler().eval()
    data = (torch.randn(6, 3, 8, 8), torch.arange(6) % 3)
    job = DistillJob(model, data, ["conv"], DistillSettings(
        samples_per_class=8, tail_path="elementwise", baseline="view", tail_dtype="float32",
        prefix_dtype="float32"))
    assert job.runner.split.tails["conv"].mutates_input
    runner = job.runner
    rows, pending = runner.prepare(job.plan, job.plan.units[0])
    with torch.inference_mode():
        inputs, prefix_out, _ = runner._inputs(job.plan, rows, pending, 0, {})
        acts = inputs["conv"]
        before = acts.clone()
        base = runner.terms.baseline("conv", acts, prefix_out, rows.key_cls)
    assert torch.equal(acts, before)
    with torch.inference_mode():
        want = model(runner.load_views(rows.keys)).gather(1, rows.key_cls[:, None])[:, 0]
    torch.testing.assert_close(base, want)


class _Recorder:
    """Stands in for the UnitRunner: records the order of its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def prepare(self, plan, unit):
        self.calls.append(f"prepare {unit.block}")
        return unit

    def launch(self, plan, unit, mu, sigma, prepared, on_batch):
        assert prepared == unit
        self.calls.append(f"launch {unit.block}")
        return unit

    def collect(self, launched, mu, sigma):
        self.calls.append(f"collect {launched.block}")
        return {}


def _order(tiny_net, tiny_data, device: str) -> list[str]:
    job = DistillJob(tiny_net, tiny_data, ["features.1"], DistillSettings(
        samples_per_class=16, samples_per_unit=4, classes_per_unit=6), classes=range(6))
    job.runner, job.device = _Recorder(), torch.device(device)
    job.state.add = lambda unit, partial: None
    job.run_pending(job.plan.units)
    return job.runner.calls


def test_on_cuda_the_next_unit_is_queued_and_the_one_after_decodes_before_a_collect(
        tiny_net, tiny_data):
    """prepare(i + 2) and launch(i + 1) come before collect(i); collect waits for its own
    unit's event only (``runner._copy_out``), so the device is never drained between units."""
    assert _order(tiny_net, tiny_data, "cuda") == [
        "prepare 0", "prepare 1", "prepare 2", "launch 0", "launch 1", "collect 0",
        "prepare 3", "launch 2", "collect 1", "launch 3", "collect 2", "collect 3"]
    # A CPU computes in launch: the next unit decodes meanwhile, nothing is queued ahead.
    assert _order(tiny_net, tiny_data, "cpu") == [
        "prepare 0", "prepare 1", "launch 0", "collect 0", "prepare 2", "launch 1",
        "collect 1", "prepare 3", "launch 2", "collect 2", "launch 3", "collect 3"]
