"""The tail of a layer (activation -> logits) as the distillation engine runs it.

Two kinds:

* ``AffineTail``: the tail is affine in the layer's spatial mean (global average pooling, then
  only reshapes, dropout in eval mode and Linear layers: MobileNetV2 ``features.18``, ResNet
  ``layer4``, most classifiers' last stage). Recognised from the fx graph, its map
  logits = W mean(A) + b is read off the tail itself and checked on an example; a perturbed
  network's logits are then one (T, K) x (K, C) product (or one row of it per sample), with no
  perturbed activation materialised (METHOD.md: the noise enters through its spatial mean).
* ``TailRunner``: any other tail, run on batches of perturbed activations. In bfloat16 its Conv
  and Linear weights are cast (channels-last) once per job rather than by autocast on every
  batch; on CUDA each full batch replays a CUDA graph where capture works (eager otherwise), on
  a CPU its convolutions run fused with their activations (``chip_fast.models.cpu_fusion``).

A third kind, a tail of per-channel ops and a Linear over the flattened maps, is
``chip_fast.distill.linear_head``'s; a tail whose leading per-channel ops run once per view
(``chip_fast.distill.chain_per_view``) runs the rest of it through a ``TailRunner``.

Owns how a tail is recognised and run; cutting the model is ``chip_fast.models.split``'s, choosing the
path per layer ``chip_fast.distill.plan``'s.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..models.cpu_fusion import FusedOnCpu
from ..models.layouts import TOKENS, Layout
from ..models.low_precision import autocast_to, low_precision_copy
from ..models.split import SplitModel, Tail

logger = logging.getLogger("chip_fast")

_RESHAPES_M = {"flatten", "view", "reshape", "squeeze", "contiguous", "size", "float"}
_RESHAPES_F = {torch.flatten, torch.reshape, torch.squeeze, operator.getitem, getattr}
_AFFINE_MODULES = (nn.Linear, nn.Dropout, nn.Identity, nn.Flatten)


def _global_mean(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` averages its (N, K, H, W) input over all spatial positions."""
    def whole(size) -> bool:
        return size in (1, (1, 1), [1, 1])
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.AdaptiveAvgPool2d) and whole(m.output_size)
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d,):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return whole(size)
    if (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dims if isinstance(dims, (tuple, list)) else [dims]
        return sorted(d % 4 if isinstance(d, int) else -1 for d in dims) == [2, 3]
    return False


def _affine_after_mean(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops allowed between the mean and the logits: reshapes, eval dropout, Linear."""
    if node.op in ("output", "get_attr"):
        return True
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, _AFFINE_MODULES) and not (isinstance(m, nn.Dropout) and m.training)
    if node.op == "call_method":
        return node.target in _RESHAPES_M
    if node.op == "call_function":
        if node.target is F.dropout:
            return node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False
        return node.target in _RESHAPES_F or node.target is F.linear
    return False


@dataclass
class AffineTail:
    """logits = weight @ spatial_mean(activation) + bias."""
    weight: torch.Tensor   # (C, K) float32
    bias: torch.Tensor     # (C,) float32

    def logits(self, means: torch.Tensor) -> torch.Tensor:
        """(T, C) logits of (T, K) spatial means."""
        return torch.addmm(self.bias, means, self.weight.t())

    def class_logits(self, means: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(T,) logit of each row's own class: one row of the product per sample."""
        w = self.weight.index_select(0, classes)
        return torch.einsum("tk,tk->t", means, w) + self.bias.index_select(0, classes)


def affine_tail(split: SplitModel, layer: str, example: torch.Tensor) -> AffineTail | None:
    """The tail of ``layer`` as an AffineTail when it is one, else None.

    ``example``: an activation of the layer (V, K, H, W), to check the map numerically on the
    real tail (a graph that looks affine but is not, e.g. a dropout in training mode, is caught
    here).
    """
    tail = split.tails[layer]
    if tail.extras or example.dim() != 4:
        return None
    graph, modules = tail.module.graph, dict(tail.module.named_modules())
    source = next(n for n in graph.nodes if n.op == "placeholder")
    users = list(source.users)
    if len(users) != 1 or not _global_mean(users[0], modules):
        return None
    after = [n for n in graph.nodes if n.op != "placeholder" and n is not users[0]]
    if not all(_affine_after_mean(n, modules) for n in after):
        return None
    k = example.shape[1]
    with torch.inference_mode():
        exact = copy.deepcopy(tail.module).to(device=example.device, dtype=torch.float64)
        # The tail of a mean sees constant maps the same at 1x1: its value at 0 is the bias and
        # at each unit vector a column of the weight.
        basis = torch.cat([torch.zeros(1, k, dtype=torch.float64, device=example.device),
                           torch.eye(k, dtype=torch.float64, device=example.device)])
        out = torch.cat([exact(basis[i:i + 512, :, None, None]) for i in range(0, k + 1, 512)])
        if out.dim() != 2:
            return None
        bias, weight = out[0], (out[1:] - out[0]).t()
        want = tail.module(example).double()
        got = example.double().mean((2, 3)) @ weight.t() + bias
        scale = want.abs().max().clamp(min=1e-6)
        if not torch.isfinite(got).all() or (got - want).abs().max() > 1e-4 * scale:
            logger.info("chip_fast: the tail of %s looks affine but does not check out", layer)
            return None
    return AffineTail(weight.float().contiguous(), bias.float().contiguous())


class TailRunner:
    """Runs the tail of one layer on batches of perturbed activations (see the module doc).

    On CUDA, ``buffer(shape)`` hands out the static input of a CUDA graph for that batch shape:
    the perturbation writes straight into it and ``__call__`` replays the graph, whose logits
    stay valid until the next call (the caller consumes them first, in stream order).
    ``captures`` records per batch shape whether its graph was captured or why that shape runs
    eagerly (the GPU check reports it; a failed capture is only slower, so it does not raise).
    """

    MAX_GRAPHS = 4   # batch shapes per layer (the full batch and a unit's last one, mostly)

    def __init__(self, split: SplitModel, layer: str, device: torch.device, dtype: torch.dtype,
                 graphs: bool = True, tail: Tail | None = None) -> None:
        """``tail``: what runs on the perturbed input, when not the layer's whole tail (the rest
        after a per-view chain, ``chain_per_view``)."""
        self.layer, self.device, self.dtype = layer, device, dtype
        tail = split.tails[layer] if tail is None else tail
        module = tail.module
        self.extras = tail.extras
        if dtype == torch.bfloat16:
            module = low_precision_copy(module, dtype)
        self.module = module
        # On a CPU its convolutions run with their activations fused (after the cast, so the
        # fused calls read the bfloat16 weights).
        self._cpu = FusedOnCpu(module, f"tail of {layer}")
        # Token rows are laid out (rows, tokens, channels) in memory, as the tail reads them
        # after turning them back from channels first (chip_fast.models.layouts).
        self.tokens = split.layouts.get(layer, Layout()).kind == TOKENS
        # shape -> [static input, graph or None (not captured yet), static output]
        self._graphs: dict[tuple, list] = {}
        self._use_graphs = graphs and device.type == "cuda" and not self.extras
        self.captures: dict[tuple, str] = {}   # shape -> "captured" / "eager: why"

    def _autocast(self):
        return autocast_to(self.device, self.dtype)

    def buffer(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """Where the perturbation of a batch of ``shape`` should go on CUDA: the static input
        of its CUDA graph, or a new tensor in the tail's dtype and layout (channels-last);
        None on other devices (the PyTorch perturbation makes its own)."""
        if self.device.type != "cuda":
            return None
        entry = self._graphs.get(shape)
        if entry is None and self._use_graphs and len(self._graphs) < self.MAX_GRAPHS:
            entry = self._graphs[shape] = [self._empty(shape), None, None]
        if entry is not None and entry[1] is not False:
            return entry[0]
        if shape not in self.captures:
            self.captures[shape] = ("eager: the tail reads other prefix values" if self.extras
                                    else "eager: graphs off" if not self._use_graphs
                                    else f"eager: more than {self.MAX_GRAPHS} batch shapes")
        return self._empty(shape)

    def _empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.tokens and len(shape) == 3:
            return torch.empty((shape[0], shape[2], shape[1]), dtype=self.dtype,
                               device=self.device).transpose(1, 2)
        fmt = torch.channels_last if len(shape) == 4 else torch.contiguous_format
        return torch.empty(shape, dtype=self.dtype, device=self.device, memory_format=fmt)

    def __call__(self, pert: torch.Tensor, prefix_out: dict[str, torch.Tensor],
                 rows: torch.Tensor) -> torch.Tensor:
        """float32 logits of perturbed activations ``pert`` (T, ...)."""
        entry = self._graphs.get(tuple(pert.shape))
        if entry is not None and entry[0] is pert and entry[1] is not False:
            if entry[1] is None:
                entry[1], entry[2] = self._capture(pert)
            if entry[1] is not False:
                entry[1].replay()
                return entry[2]
        extras = [prefix_out[name].index_select(0, rows) for name in self.extras]
        with self._autocast():
            module = self._cpu.for_inputs(pert, *extras) if pert.device.type == "cpu" \
                else self.module
            return module(pert, *extras).float()

    def _capture(self, static_in: torch.Tensor):
        """(graph, static output) of the tail on ``static_in``; (False, None) where capture
        fails, and that shape runs eagerly from then on."""
        shape = tuple(static_in.shape)
        try:
            # Capture synchronises and allocates once per shape, legitimately: the hot loop's
            # sync checks (CHIP_FAST_SYNC_DEBUG) are off for it, or every capture would fail.
            with sync_checks_off(self.device):
                graph, static_out = self._capture_graph(static_in)
            self.captures[shape] = "captured"
            return graph, static_out
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
            self.captures[shape] = f"eager: capture failed: {type(e).__name__}: {e}"[:300]
            logger.info("chip_fast: CUDA graph capture of the %s tail failed (%s); eager",
                        self.layer, e)
            return False, None

    def _capture_graph(self, static_in: torch.Tensor):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), self._autocast():
            # Warm-up outside the graph (cuDNN/cuBLAS choose kernels), on a copy: a tail
            # may write into its input (an in-place ReLU after the cut).
            for _ in range(2):
                self.module(static_in.clone())
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self._autocast():
            static_out = self.module(static_in).float()
        return graph, static_out


@contextlib.contextmanager
def sync_checks_off(device: torch.device):
    """Sync debug mode off inside (where a sync is meant to happen)."""
    if device.type != "cuda" or torch.cuda.get_sync_debug_mode() == 0:
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@contextlib.contextmanager
def no_sync_checks(device: torch.device):
    """Inside the hot loop on CUDA, any host-device synchronisation is an error (with
    CHIP_FAST_SYNC_DEBUG=1, used by the GPU check) instead of a silent stall."""
    import os
    if device.type != "cuda" or os.environ.get("CHIP_FAST_SYNC_DEBUG") != "1":
        yield
        return
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


def response_matrix(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """(T, C) float32 responses to every class; each row's own class is picked by the sums."""
    if logits.dtype != torch.float32:   # the tails return float32: no op per batch then
        logits = logits.float()
    if kind == "softmax":
        return torch.softmax(logits, dim=1)
    if kind == "log_softmax":
        return torch.log_softmax(logits, dim=1)
    return logits


def response_of(logits: torch.Tensor, classes: torch.Tensor, kind: str) -> torch.Tensor:
    """The class's response per row, float32: its logit, softmax probability or log-softmax."""
    return response_matrix(logits, kind).gather(1, classes[:, None])[:, 0]
