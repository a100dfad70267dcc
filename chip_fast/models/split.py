"""The one way to get a layer's activation: the model cut at its layers with torch.fx.

A ``SplitModel`` is the model as a prefix (input -> the layers' activations) and, per layer, a
tail (that layer's activation -> logits). Distillation perturbs what the prefix returns and runs
the tails; ``explain`` and the evaluation read the same prefix outputs, so the activation a map
is built from is the activation distillation perturbed. Layers are module names or, where the
operation is a function call (DenseNet's final ``F.relu``), fx node names.

An activation that a later operation of the prefix modifies in place (a conv followed by
``ReLU(inplace=True)``) is copied before that operation runs, so the prefix returns the layer's
own output. Models that fx cannot trace get ``HookedModel``: forward hooks that copy the outputs,
for maps only (distillation needs the tails).

Every layer's activation comes out channels first (``chip_fast.models.layouts``): a transformer's
tokens (N, E + H*W, C) as (N, C, E + H*W) and channels-last maps as (N, C, H, W), read off the
first batch the split runs; a token layer's tail begins by turning them back. ``activation`` is
what distillation perturbs (every token), ``feature_maps`` what maps are made of (the grid).

This module owns cutting and running the model; it never perturbs, scores or solves.
"""
from __future__ import annotations

import contextlib
import math
import operator
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .cpu_fusion import FusedOnCpu
from .fingerprint import weight_versions
from .folding import simplified
from .layers import LayerError, check_layers
from .layouts import MAPS, Layout, conv_grids, infer_layout
from .low_precision import autocast_to, low_precision_copy
from .row_chunks import chunk_rows, run_in_chunks
from .tracing import trace


class UntraceableError(LayerError):
    """torch.fx cannot trace the model, so it cannot be cut into prefix and tails."""


def mutates_first_argument(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write into its first argument (in-place ops)."""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        if node.kwargs.get("inplace"):
            return True
        if node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
            return True
        return getattr(node.target, "__name__", "").endswith("_")
    return False


def _mutated_later(node: fx.Node, within: set[fx.Node], modules: dict[str, nn.Module]) -> bool:
    return any(u in within and u.args and u.args[0] is node and mutates_first_argument(u, modules)
               for u in node.users)


def _constant_nodes(order: list[fx.Node]) -> set[fx.Node]:
    """Nodes computed from parameters and constants alone (ConvNeXt's layer scale reshaped to
    (1, C, 1, 1)): the same for every image, so a tail recomputes them rather than taking them
    per image from the prefix."""
    constant: set[fx.Node] = set()
    for n in order:
        if n.op == "get_attr" or (n.op in ("call_function", "call_method") and
                                  all(a in constant for a in n.all_input_nodes)):
            constant.add(n)
    return constant


def _shape_nodes(order: list[fx.Node]) -> set[fx.Node]:
    """Nodes that read a tensor's shape (``B, H, W, C = x.shape``, as Swin's blocks do) and
    arithmetic on them: a tail recomputes them from its own inputs, since its batch is not the
    prefix's."""
    shapes: set[fx.Node] = set()
    for n in order:
        reads = ((n.op == "call_function" and n.target is getattr and n.args[1:2] == ("shape",))
                 or (n.op == "call_method" and n.target in ("size", "dim")))
        derived = (n.op == "call_function" and n.all_input_nodes
                   and all(a in shapes for a in n.all_input_nodes)
                   and (n.target is operator.getitem or n.target in _SIZE_ARITHMETIC))
        if reads or derived:
            shapes.add(n)
    return shapes


_SIZE_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod}


def _bring_in(a: fx.Node, g: fx.Graph, env: dict[fx.Node, fx.Node], extras: list[str],
              recomputed: set[fx.Node]) -> None:
    """Make the tail's graph ``g`` hold prefix value ``a``: a constant or a shape is recomputed
    in the tail (with what it is computed from), anything else becomes an extra input, per
    image."""
    if a in recomputed:
        for b in a.all_input_nodes:
            if b not in env:
                _bring_in(b, g, env, extras, recomputed)
        env[a] = g.node_copy(a, lambda x: env[x])
    else:
        extras.append(a.name)
        env[a] = g.placeholder(f"extra_{a.name}")


@dataclass
class Tail:
    """layer -> logits. ``extras`` are other prefix values the tail reads (a skip connection
    around the cut), given per image and gathered per sample. ``mutates_input``: the tail writes
    into its input activation (an in-place ReLU right after the cut)."""
    module: fx.GraphModule
    extras: list[str]
    mutates_input: bool


class SplitModel:
    """A model cut at one or more layers, so the prefix runs once per image batch and only the
    tail runs per perturbation sample."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        modules = dict(model.named_modules())
        try:
            graph = trace(model, [l for l in layers if l in modules])
        except Exception as e:  # fx raises many types for untraceable Python
            check_layers(model, layers)
            raise UntraceableError(f"chip_fast splits the model at the layer with torch.fx, which cannot "
                             f"trace {type(model).__name__}: {type(e).__name__}: {e}") from e
        nodes = list(graph.nodes)
        functions = [n.name for n in nodes if n.op in ("call_function", "call_method")]
        self.layers = check_layers(model, layers, functions)
        self.root = fx.GraphModule(model, graph)
        self._modules = dict(self.root.named_modules())
        cut = {layer: self._cut_node(nodes, layer, modules) for layer in self.layers}
        self.tails = {layer: self._tail(graph, cut[layer]) for layer in self.layers}
        wanted = [cut[layer] for layer in self.layers]
        extra_nodes = {n for t in self.tails.values() for n in t.extras}
        wanted += [n for n in nodes if n.name in extra_nodes and n not in wanted]
        self.prefix = simplified(self._prefix(graph, wanted))
        self._cpu_prefix = FusedOnCpu(self.prefix, "prefix")
        for tail in self.tails.values():
            tail.module = simplified(tail.module)
        self._prefix_names = [n.name for n in wanted]
        self._layer_node = {layer: cut[layer].name for layer in self.layers}
        # The tail that ends the model: the layer cut last in the graph's order.
        self._last = max(self.layers, key=lambda l: nodes.index(cut[l]))
        self._graph, self._cut = graph, cut
        # Known after the first batch (a layout needs shapes); (N, C, H, W) maps until then,
        # whose tails need no change.
        self.layouts: dict[str, Layout] = {}
        self._chunk_rows: dict[tuple, int] = {}   # (row shape, dtype) -> rows per CPU chunk
        self._low: dict[torch.dtype, tuple[nn.Module, FusedOnCpu]] = {}   # dtype -> its copy

    @staticmethod
    def _cut_node(nodes: list[fx.Node], layer: str, modules: dict[str, nn.Module]) -> fx.Node:
        if layer in modules:
            calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
            if len(calls) != 1:
                raise LayerError(f"layer {layer!r} is called {len(calls)} times in forward; "
                                 "chip_fast needs a layer that runs exactly once")
            return calls[0]
        return next(n for n in nodes if n.name == layer)

    def _tail(self, graph: fx.Graph, cut: fx.Node, layout: Layout = Layout()) -> Tail:
        downstream = {cut}
        order = list(graph.nodes)
        for n in order[order.index(cut) + 1:]:
            if any(a in downstream for a in n.all_input_nodes):
                downstream.add(n)
        out = next(n for n in order if n.op == "output")
        if out not in downstream:
            raise LayerError(f"the model output does not depend on layer {cut.name!r}")
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {cut: layout.native_node(g, g.placeholder("activation"))}
        extras: list[str] = []
        recomputed = _constant_nodes(order) | _shape_nodes(order)
        for n in order:
            if n in downstream and n is not cut:
                for a in n.all_input_nodes:
                    if a not in env:
                        _bring_in(a, g, env, extras, recomputed)
                env[n] = g.node_copy(n, lambda x: env[x])
        return Tail(fx.GraphModule(self.root, g), extras,
                    _mutated_later(cut, downstream, self._modules))

    def _prefix(self, graph: fx.Graph, wanted: list[fx.Node]) -> fx.GraphModule:
        needed: set[fx.Node] = set()
        stack = list(wanted)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        returned: dict[fx.Node, fx.Node] = {}
        for n in graph.nodes:
            if n in needed:
                env[n] = g.node_copy(n, lambda x: env[x])
                if n in wanted:
                    # Copy before a later in-place op of the prefix overwrites the layer's output.
                    returned[n] = (g.call_method("clone", (env[n],))
                                   if _mutated_later(n, needed, self._modules) else env[n])
        g.output(tuple(returned[n] for n in wanted))
        return fx.GraphModule(self.root, g)

    def run_prefix(self, x: torch.Tensor, dtype: torch.dtype | None = None
                   ) -> dict[str, torch.Tensor]:
        """Activations of every layer, channels first, and the tails' extra inputs as the model
        made them, keyed by node name. ``dtype=torch.bfloat16``: the prefix computes in
        bfloat16 (``low_precision``) and its outputs come back in float32."""
        out = None
        if len(self.layouts) < len(self.layers):
            with conv_grids(self.prefix) as resolutions:
                out = dict(zip(self._prefix_names, self._run(x, fuse=False)))  # conv calls seen
            self._bind(out, resolutions, len(x))
        if out is None or dtype is not None:
            out = dict(zip(self._prefix_names, self._run(x, dtype=dtype)))
        for layer, layout in self.layouts.items():
            if layout.kind != MAPS:
                node = self._layer_node[layer]
                out[self._key(layer)] = layout.channels_first(out[node])
        return out

    def _run(self, x: torch.Tensor, fuse: bool = True, dtype: torch.dtype | None = None
             ) -> tuple[torch.Tensor, ...]:
        """The prefix on ``x``, in ``dtype`` if given; on a CPU fused (``cpu_fusion``) and in
        chunks of rows (``row_chunks``), unless a module that mixes rows (a training batch
        norm) is in it."""
        if dtype is not None:
            if dtype not in self._low:
                low = low_precision_copy(self.prefix, dtype)
                self._low[dtype] = (low, FusedOnCpu(low, f"{dtype} prefix"))
            if x.is_floating_point():   # the input in dtype: the fused op needs it
                x = x.to(dtype)
            with autocast_to(x.device, dtype):
                out = self._run_module(x, *self._low[dtype], fuse)
            return tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t
                         for t in out)
        return self._run_module(x, self.prefix, self._cpu_prefix, fuse)

    def _run_module(self, x: torch.Tensor, module: fx.GraphModule, fused: FusedOnCpu,
                    fuse: bool) -> tuple[torch.Tensor, ...]:
        if x.device.type != "cpu" or len(x) == 1 or any(
                m.training for m in module.modules() if isinstance(m, _BatchNorm)):
            return tuple(module(x))
        prefix = fused.for_inputs(x) if fuse else module
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._chunk_rows:   # 0: outputs that are not batch-first, never chunked
            self._chunk_rows[key] = chunk_rows(prefix, x) or 0
        rows = self._chunk_rows[key]
        return run_in_chunks(prefix, x, rows) if rows else tuple(prefix(x))

    def _key(self, layer: str) -> str:
        """Where a layer's channels-first activation is kept: under its node's name, unless a
        tail also reads that node as an extra input (in the model's own layout)."""
        node = self._layer_node[layer]
        if self.layouts[layer].kind != MAPS and any(node in t.extras for t in self.tails.values()):
            return f"{node}:channels_first"
        return node

    def _bind(self, out: dict[str, torch.Tensor], resolutions: set[tuple[int, int]],
              batch: int) -> None:
        """Each layer's layout from its output on the first batch; a token or channels-last
        layer's tail is rebuilt to take channels-first input."""
        for layer in self.layers:
            a = out[self._layer_node[layer]]
            layout = infer_layout(a.shape, resolutions, batch) if torch.is_tensor(a) else None
            if layout is None:
                shape = tuple(a.shape) if torch.is_tensor(a) else type(a).__name__
                raise LayerError(
                    f"layer {layer!r} returns {shape} for {batch} images: neither feature maps "
                    "((N, C, H, W) or (N, H, W, C)) nor tokens ((N, extra + H*W, C)) over the "
                    "model's patch grid; choose another layer (chip_fast.default_layers(model))")
            if layout.kind == MAPS and math.prod(a.shape[2:]) == 1:
                warnings.warn(f"layer {layer!r} returns {tuple(a.shape)}: one position per "
                              "image at this input size, so its importance is sound but its "
                              "maps have no location (a constant map)", stacklevel=2)
            if layout.kind != MAPS:
                tail = self._tail(self._graph, self._cut[layer], layout)
                tail.module = simplified(tail.module)
                self.tails[layer] = tail
            self.layouts[layer] = layout

    def activation(self, prefix_out: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
        """The layer's activation channels first, every token kept: what distillation perturbs
        and the layer's tail takes."""
        if layer in self.layouts:
            return prefix_out[self._key(layer)]
        return prefix_out[self._layer_node[layer]]

    def feature_maps(self, prefix_out: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
        """The layer's (N, C, H, W) maps: its activation without the extra tokens (class,
        register), which have no place on the image."""
        return self.layouts.get(layer, Layout()).grid_maps(self.activation(prefix_out, layer))

    def run_tail(self, layer: str, activation: torch.Tensor, prefix_out: dict[str, torch.Tensor],
                 rows: torch.Tensor) -> torch.Tensor:
        """Logits from perturbed ``activation`` (T, ...); extras are gathered by ``rows``."""
        tail = self.tails[layer]
        extras = [prefix_out[name].index_select(0, rows) for name in tail.extras]
        return tail.module(activation, *extras)

    def logits(self, prefix_out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits from the prefix outputs: the tail of the layer cut last."""
        last = self.activation(prefix_out, self._last)
        if self.tails[self._last].mutates_input:
            last = last.clone()
        rows = torch.arange(len(last), device=last.device)
        return self.run_tail(self._last, last, prefix_out, rows)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """((N, C, H, W) maps of every layer, logits) of images ``x``: one pass through the
        model."""
        out = self.run_prefix(x)
        return {layer: self.feature_maps(out, layer) for layer in self.layers}, self.logits(out)


class HookedModel:
    """For models fx cannot trace: the layers' outputs recorded by forward hooks (copied, so an
    in-place op after the layer cannot change them), and the model's logits. Maps only."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.model = model
        self.layers = check_layers(model, layers)
        self.layouts: dict[str, Layout] = {}

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """((N, C, H, W) maps of every layer, logits), as ``SplitModel.forward``."""
        with capture_activations(self.model, self.layers) as acts, \
                conv_grids(self.model) as resolutions:
            logits = self.model(x)
        for layer in self.layers:
            if layer not in self.layouts:
                layout = infer_layout(acts[layer].shape, resolutions, len(x))
                if layout is None:
                    raise LayerError(f"layer {layer!r} returns {tuple(acts[layer].shape)}: "
                                     "neither feature maps nor tokens over the model's patch "
                                     "grid; choose another layer")
                self.layouts[layer] = layout
        return {l: self.layouts[l].grid_maps(self.layouts[l].channels_first(acts[l]))
                for l in self.layers}, logits


@contextlib.contextmanager
def capture_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record copies of the outputs of ``layers`` during forward passes; hooks are removed on
    exit, also when the body raises."""
    layers = check_layers(model, layers)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            def hook(_m, _i, out, name=name):
                if not torch.is_tensor(out):
                    raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
                store[name] = out.clone()
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


# Split models per model and layer list: tracing costs more than a batch of maps. The split
# folds batch norms into copies of convolutions, so it is rebuilt when any parameter or buffer
# of the model changes (their version counters move with every in-place update).
_splits: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, ...], tuple[tuple, object]]]" \
    = weakref.WeakKeyDictionary()


def split_model(model: nn.Module, layers: Sequence[str]) -> SplitModel | HookedModel:
    """The model cut at ``layers`` (cached while its weights stay the same), or hooks where fx
    cannot trace it.

    A wrong layer name raises LayerError listing the valid names in both cases.
    """
    key = tuple([layers] if isinstance(layers, str) else layers)
    per_model = _splits.setdefault(model, {})
    versions = weight_versions(model)
    if key not in per_model or per_model[key][0] != versions:
        try:
            split: SplitModel | HookedModel = SplitModel(model, key)
        except UntraceableError:
            split = HookedModel(model, key)
        per_model[key] = (versions, split)
    return per_model[key][1]
