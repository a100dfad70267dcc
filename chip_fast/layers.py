"""Layers of a model: checking names, choosing defaults, capturing activations, and splitting the
model at a layer into a prefix (input -> layer) and a tail (layer -> logits)."""
from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.fx as fx
from torch import nn

logger = logging.getLogger("chip_fast")


class LayerError(ValueError):
    """A layer name that the model does not have, or cannot be used."""


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    """Return ``layers`` as a list after checking that each names a submodule of ``model``.

    A wrong name raises LayerError listing the closest and the valid names.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise LayerError("no layer given")
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            shallow = [n for n in names if n.count(".") <= 1]
            hint = f" Closest: {', '.join(close)}." if close else ""
            raise LayerError(f"{type(model).__name__} has no layer {layer!r}.{hint} Valid names "
                             f"include: {', '.join(shallow)} (any name of model.named_modules()).")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice: {layers}")
    for a in layers:
        for b in layers:
            if a != b and b.startswith(a + "."):
                raise LayerError(f"layer {b!r} lies inside layer {a!r}: give one of them")
    return layers


# Deepest convolutional stage and one at twice its resolution, for common torchvision families.
# MobileNetV2's stage outputs at 14x14 are linear bottlenecks (no ReLU): a signed channel's value
# is not its presence. Measured (bench/results/mid_layers, positive weights, 150 photos), the
# ReLU6'd expansion that opens the next block, still 14x14, localises better alone (MaxBoxAcc
# 0.53 vs 0.51) and far better refined with features.18 (0.71 vs 0.51), so it is the mid layer.
_KNOWN_DEFAULTS = {
    "MobileNetV2": ["features.14.conv.0", "features.18"],
    "MobileNetV3": ["features.12", "features.16"],
    "ResNet": ["layer3", "layer4"],
    "VGG": None,  # computed: indices differ between VGG11..19
    "EfficientNet": ["features.5", "features.8"],
    "EfficientNetLite": ["features.5", "features.7"],
    "ConvNeXt": ["features.5", "features.7"],
    "RegNet": ["trunk_output.block3", "trunk_output.block4"],
    "DenseNet": ["features.denseblock3", "features.norm5"],
}


def default_layers(model: nn.Module, input_size: int = 224) -> list[str]:
    """The deepest convolutional stage and the deepest one at twice its resolution.

    Known torchvision families use a fixed table; other models are probed with one forward pass
    of a blank image, picking stage-level modules by their output resolution.
    """
    known = _KNOWN_DEFAULTS.get(type(model).__name__)
    names = {n for n, _ in model.named_modules()}
    if known and all(n in names for n in known):
        return list(known)
    return _probe_default_layers(model, input_size)


def _probe_default_layers(model: nn.Module, input_size: int) -> list[str]:
    outputs: list[tuple[str, bool, torch.Tensor]] = []
    hooks = []
    pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

    def record(name, is_pool):
        def hook(_m, _i, out):
            if torch.is_tensor(out) and out.dim() == 4:
                outputs.append((name, is_pool, out))  # tensors kept alive: ids get reused
        return hook

    try:
        for name, m in model.named_modules():
            if name:
                hooks.append(m.register_forward_hook(record(name, isinstance(m, pooling))))
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    # Group the modules that returned the same tensor (a block, its container, its last leaf).
    groups: list[tuple[torch.Tensor, list[str], bool]] = []
    for name, is_pool, out in outputs:
        for i, (t, names, pooled) in enumerate(groups):
            if t is out:
                groups[i] = (t, names + [name], pooled or is_pool)
                break
        else:
            groups.append((out, [name], is_pool))
    # Pooled maps are not feature maps of a stage; 1x1 maps have nothing to localise.
    groups = [(tuple(t.shape[-2:]), names) for t, names, pooled in groups
              if not pooled and t.shape[-2] * t.shape[-1] > 1]
    if not groups:
        raise LayerError(f"{type(model).__name__} has no 4-D feature maps: give layers= explicitly")

    def best_name(names):
        # The shortest name with two or more parts is the block (features.18), not the
        # container (features) nor a leaf inside the block (features.18.2).
        # Ties go to the last module to finish: an in-place ReLU after its convolution (VGG).
        staged = [n for n in names if "." in n] or names
        depth = min(n.count(".") for n in staged)
        return [n for n in staged if n.count(".") == depth][-1]

    def pick(hw):
        # The last block output at this resolution, among the shallowest names: a stage's
        # output rather than the first convolution of the next, strided, stage.
        names = [best_name(ns) for h, ns in groups if h == hw]
        depth = min(n.count(".") for n in names)
        return [n for n in names if n.count(".") == depth][-1]

    deep_hw = groups[-1][0]
    chosen = [pick(deep_hw)]
    double = (deep_hw[0] * 2, deep_hw[1] * 2)
    if any(h == double for h, _ in groups):
        chosen.insert(0, pick(double))
    return chosen


@contextlib.contextmanager
def capture_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forward passes; hooks are removed on exit, also
    when the body raises."""
    layers = check_layers(model, layers)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in layers:
            def hook(_m, _i, out, name=name):
                if not torch.is_tensor(out):
                    raise LayerError(f"layer {name!r} returns {type(out).__name__}, not a tensor")
                store[name] = out
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


@dataclass
class Tail:
    """layer -> logits. ``extras`` are other prefix values the tail reads (a skip connection
    around the cut), given per image and gathered per sample."""
    module: fx.GraphModule
    extras: list[str]


class SplitModel:
    """A model cut at one or more layers, so the prefix runs once per image batch and only the
    tail runs per perturbation sample."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.layers = check_layers(model, layers)
        try:
            graph = _Tracer(set(self.layers)).trace(model)
        except Exception as e:  # fx raises many types for untraceable Python
            raise LayerError(f"chip_fast splits the model at the layer with torch.fx, which cannot "
                             f"trace {type(model).__name__}: {type(e).__name__}: {e}") from e
        self.root = fx.GraphModule(model, graph)
        nodes = list(graph.nodes)
        cut = {}
        for layer in self.layers:
            calls = [n for n in nodes if n.op == "call_module" and n.target == layer]
            if len(calls) != 1:
                raise LayerError(f"layer {layer!r} is called {len(calls)} times in forward; "
                                 "chip_fast needs a layer that runs exactly once")
            cut[layer] = calls[0]
        self.tails = {layer: self._tail(graph, cut[layer]) for layer in self.layers}
        wanted = [cut[layer] for layer in self.layers]
        extra_nodes = {n for t in self.tails.values() for n in t.extras}
        wanted += [n for n in nodes if n.name in extra_nodes and n not in wanted]
        self.prefix = self._prefix(graph, wanted)
        self._prefix_names = [n.name for n in wanted]
        self._layer_node = {layer: cut[layer].name for layer in self.layers}

    def _tail(self, graph: fx.Graph, cut: fx.Node) -> Tail:
        downstream = {cut}
        order = list(graph.nodes)
        for n in order[order.index(cut) + 1:]:
            if any(a in downstream for a in n.all_input_nodes):
                downstream.add(n)
        out = next(n for n in order if n.op == "output")
        if out not in downstream:
            raise LayerError(f"the model output does not depend on layer {cut.target!r}")
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {cut: g.placeholder("activation")}
        extras: list[str] = []
        for n in order:
            if n in downstream and n is not cut:
                for a in n.all_input_nodes:
                    if a in env:
                        continue
                    if a.op == "get_attr":
                        env[a] = g.node_copy(a, lambda x: env[x])
                    else:
                        extras.append(a.name)
                        env[a] = g.placeholder(f"extra_{a.name}")
                env[n] = g.node_copy(n, lambda x: env[x])
        return Tail(fx.GraphModule(self.root, g), extras)

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
        for n in graph.nodes:
            if n in needed:
                env[n] = g.node_copy(n, lambda x: env[x])
        g.output(tuple(env[n] for n in wanted))
        return fx.GraphModule(self.root, g)

    def run_prefix(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations of every layer (and the tails' extra inputs), keyed by node name."""
        return dict(zip(self._prefix_names, self.prefix(x)))

    def activation(self, prefix_out: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
        return prefix_out[self._layer_node[layer]]

    def run_tail(self, layer: str, activation: torch.Tensor, prefix_out: dict[str, torch.Tensor],
                 rows: torch.Tensor) -> torch.Tensor:
        """Logits from perturbed ``activation`` (T, ...); extras are gathered by ``rows``."""
        tail = self.tails[layer]
        extras = [prefix_out[name].index_select(0, rows) for name in tail.extras]
        return tail.module(activation, *extras)
