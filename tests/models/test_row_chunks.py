"""A CPU prefix runs in chunks of rows whose largest tensor stays below glibc's mmap threshold
(``chip_fast.models.row_chunks``): the chunk size follows from the model, the chunked prefix
gives the unchunked one's activations, and a prefix whose result depends on the batch (batch
norm in training mode) is never chunked."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from chip_fast.models import row_chunks
from chip_fast.models.row_chunks import chunk_rows, rows_per_chunk, run_in_chunks
from chip_fast.models.split import SplitModel


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        a = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(a)).mean((2, 3)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():   # batch norm statistics that are not the identity
        net.bn1.running_mean.uniform_(-1, 1)
        net.bn1.running_var.uniform_(0.5, 2)
    return net.eval()


def test_chunks_are_sized_by_the_largest_tensor_of_one_row(monkeypatch):
    gm = fx.symbolic_trace(_net())
    x = torch.randn(7, 3, 12, 12)
    # conv1's (1, 16, 12, 12) float32 output is the largest tensor any node makes
    peak = 16 * 12 * 12 * 4
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 3 * peak)
    assert chunk_rows(gm, x) == 3
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 3 * peak - 1)
    assert chunk_rows(gm, x) == 2


@pytest.mark.parametrize("peak, budget, rows", [(4 << 20, 24 << 20, 6), (5 << 20, 24 << 20, 4),
                                                (100 << 20, 24 << 20, 1), (0, 24 << 20, 24 << 20)])
def test_rows_per_chunk(peak, budget, rows):
    assert rows_per_chunk(peak, budget) == rows


def test_run_in_chunks_concatenates_every_output_in_order():
    calls = []

    def fn(x):
        calls.append(len(x))
        return x * 2, x.sum(1)
    x = torch.randn(10, 3)
    out = run_in_chunks(fn, x, 4)
    assert calls == [4, 4, 2]
    torch.testing.assert_close(out[0], x * 2, rtol=0, atol=0)
    torch.testing.assert_close(out[1], x.sum(1), rtol=0, atol=0)
    calls.clear()
    run_in_chunks(fn, x, 10)
    assert calls == [10]


def _prefix_batches(split: SplitModel) -> list[int]:
    seen: list[int] = []
    conv = next(m for m in split.prefix.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    return seen


def test_cpu_prefix_runs_in_chunks_and_gives_the_same_activations(monkeypatch):
    net = _net()
    x = torch.randn(9, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    whole = SplitModel(net, ["conv1", "conv2"])
    with torch.inference_mode():
        expected = tuple(whole.prefix(x))   # the fx prefix called once on all rows
    # a budget of two rows of conv1's output
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 2 * 16 * 12 * 12 * 4)
    split = SplitModel(net, ["conv1", "conv2"])
    seen = _prefix_batches(split)
    with torch.inference_mode():
        out = split.run_prefix(x)
    assert seen[-5:] == [2, 2, 2, 2, 1]
    for name, want in zip(split._prefix_names, expected):
        assert out[name].shape == want.shape
        assert not out[name].isnan().any()
        torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-6)


def test_batch_norm_in_training_mode_is_never_chunked(monkeypatch):
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 1)
    net = _net().train()
    split = SplitModel(net, ["conv2"])
    seen = _prefix_batches(split)
    with torch.no_grad():
        split.run_prefix(torch.randn(6, 3, 12, 12))
    assert seen == [6]


class NotBatchFirst(nn.Module):
    """A prefix whose output puts the batch second, as a sequence-first transformer would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x), self.conv(x).flatten(2).permute(2, 0, 1)   # (H*W, N, C)


def test_outputs_that_are_not_batch_first_are_never_chunked(monkeypatch):
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 1)
    gm = fx.symbolic_trace(NotBatchFirst().eval())
    x = torch.randn(6, 3, 5, 5)
    assert chunk_rows(gm, x) is None
    assert chunk_rows(fx.symbolic_trace(_net()), x) == 1


def test_a_whole_model_is_sized_like_its_trace_and_remembered(monkeypatch):
    net, x = _net(), torch.randn(7, 3, 12, 12)
    peak = 16 * 12 * 12 * 4                      # conv1's output, as above
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 3 * peak)
    assert row_chunks.model_rows(net, x) == 3
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 10 * peak)
    assert row_chunks.model_rows(net, x) == 3      # per model and input shape, once
    assert row_chunks.model_rows(net, torch.randn(7, 3, 6, 6)) == 40   # a new shape


class Untraceable(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x        # data-dependent control flow: fx cannot trace


def test_whole_models_that_cannot_be_chunked_run_whole():
    x = torch.randn(4, 3, 12, 12)
    assert row_chunks.model_rows(Untraceable(), x) is None
    assert row_chunks.model_rows(_net().train(), x) is None   # batch norm would move and change
    net = _net()
    stats = net.bn1.running_mean.clone()
    assert row_chunks.model_rows(net, x) is not None
    assert torch.equal(net.bn1.running_mean, stats)            # probing an eval model moves nothing
