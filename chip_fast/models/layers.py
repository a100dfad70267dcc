"""Layers of a model: checking names, choosing the default layers, probing output sizes.

Owns what a layer name may be and which layers are the defaults; cutting the model and running
it at those layers is ``chip_fast.models.split``'s."""
from __future__ import annotations

import difflib
import logging
import weakref
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .layouts import token_grid
from .tracing import trace

logger = logging.getLogger("chip_fast")


class LayerError(ValueError):
    """A layer name that the model does not have, or cannot be used."""


def check_layers(model: nn.Module, layers: Sequence[str], functions: Sequence[str] = ()
                 ) -> list[str]:
    """Return ``layers`` as a list after checking that each names a submodule of ``model`` or
    one of ``functions`` (fx node names of function calls, where the model is traced).

    A wrong name raises LayerError listing the closest and the valid names.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise LayerError("no layer given")
    names = [n for n, _ in model.named_modules() if n]
    known = set(names) | set(functions)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names + list(functions), n=5, cutoff=0.5)
            shallow = [n for n in names if n.count(".") <= 1]
            hint = f" Closest: {', '.join(close)}." if close else ""
            calls = (f" Function calls (fx node names): {', '.join(functions)}." if functions
                     else "")
            raise LayerError(f"{type(model).__name__} has no layer {layer!r}.{hint} Valid names "
                             f"include: {', '.join(shallow)} (any name of model.named_modules())."
                             f"{calls}")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice: {layers}")
    for a in layers:
        for b in layers:
            if a != b and b.startswith(a + "."):
                raise LayerError(f"layer {b!r} lies inside layer {a!r}: give one of them")
    return layers


# -- default layers: activations that mean presence -----------------------------------------------
#
# The rule (docs/design.md): the default layers are the outputs of the last ReLU-like operation
# (ReLU, ReLU6, SiLU, Hardswish, GELU, LeakyReLU: module or function call, or a concatenation of
# such outputs) at the deepest spatial resolution of the network, and the last one at the next
# larger resolution (twice it in networks that halve; Inception's valid convolutions go 8 -> 17).
# A CHIP map is a positively weighted
# sum of a layer's channels, so a channel's value must say how much of its pattern is present:
# the output of such an activation does (zero or near zero where the pattern is absent), a linear
# bottleneck (MobileNetV2/V3 and EfficientNet stage outputs) or a batch norm does not (signed).
# Measured: docs/evaluation.md. "Last" is in execution order, among outputs a layer name can
# address: the deepest block whose output the activation is (features.18 rather than
# features.18.2), else the activation module if it runs once, else the fx node name of a function
# call (DenseNet's final F.relu is node "relu"). A ReLU module that a block calls several times
# (ResNet's) is addressed through the block that ends with it. The same rule reads transformers
# (``layouts``): a resolution is then the grid of the tokens or of the channels-last maps, and
# the presence activation is the GELU inside each block's MLP (ViT/DeiT: blocks.11.mlp.act, one
# grid, one layer; Swin: the last block's of the last two stages). Their residual streams and
# norms are signed, like a linear bottleneck, and never chosen. Models with no such activation
# fall back to their (N, C, H, W) stage outputs.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU)
_ACTIVATION_FUNCTIONS = {F.relu, F.relu_, F.relu6, F.silu, F.hardswish, F.gelu, F.leaky_relu,
                         F.leaky_relu_, torch.relu, torch.relu_}
# Joining presence outputs along channels keeps presence (Inception's blocks end in one).
_CONCATENATIONS = {torch.cat, torch.concat, torch.concatenate}
_ACTIVATION_METHODS = {"relu", "relu_"}

# Per model class and input size: tracing and a blank forward pass cost more than a call should.
_defaults_cache: "weakref.WeakKeyDictionary[nn.Module, dict[int, list[str]]]" = \
    weakref.WeakKeyDictionary()


def default_layers(model: nn.Module, input_size: int = 224) -> list[str]:
    """The default layers of ``model``: the last presence activation (see the rule above) at
    the resolution above the deepest, and the last one at the deepest resolution, shallow first.

    One traced forward pass of a blank ``input_size`` image finds them (cached per model);
    models fx cannot trace are probed with forward hooks on their activation modules.
    """
    per_model = _defaults_cache.setdefault(model, {})
    if input_size not in per_model:
        try:
            found = _presence_layers_fx(model, input_size)
        except LayerError:
            raise
        except Exception:  # noqa: BLE001 - fx raises many types for untraceable Python
            found = _presence_layers_hooks(model, input_size)
        if not found:
            logger.info("chip_fast: %s has no ReLU-like activation over a grid; "
                        "using its stage outputs", type(model).__name__)
            found = _stage_outputs(model, input_size)
        per_model[input_size] = found
    return list(per_model[input_size])


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ACTIVATIONS)
    if node.op == "call_function":
        return node.target in _ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in _ACTIVATION_METHODS


def _spatial(t, resolutions: set[tuple[int, int]]) -> tuple[int, int] | None:
    """(H, W) of an (N, C, H, W) tensor at a resolution some convolution produces, or of the
    grid of tokens or channels-last maps (``layouts``) of one image; else None (vectors,
    pooled maps, attention windows)."""
    if not torch.is_tensor(t) or t.dim() not in (3, 4):
        return None
    hw = (int(t.shape[-2]), int(t.shape[-1]))
    if t.dim() == 4 and hw in resolutions:
        return hw if hw[0] * hw[1] > 1 else None
    return token_grid(tuple(t.shape), resolutions, 1)


def _node_name(node: fx.Node, modules: dict[str, nn.Module], last_in_scope: dict[str, fx.Node],
               repeated: set[str]) -> str | None:
    """The layer name that addresses ``node``'s output, or None (see the rule)."""
    scopes = [k for k in node.meta.get("nn_module_stack", {}) if "@" not in k]
    blocks = [k for k in scopes if last_in_scope.get(k) is node and k not in repeated
              and not isinstance(modules.get(k), ACTIVATIONS)]
    if blocks:
        return max(blocks, key=lambda k: k.count("."))
    if node.op == "call_module":
        return node.target if node.target not in repeated else None
    return node.name


def _presence_layers_fx(model: nn.Module, input_size: int) -> list[str]:
    gm = fx.GraphModule(model, trace(model))
    modules = dict(model.named_modules())
    values: dict[fx.Node, object] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n] = out
            return out

    p = next(model.parameters())
    with torch.no_grad():
        Recorder(gm).run(torch.zeros(1, 3, input_size, input_size, dtype=p.dtype,
                                     device=p.device))
    nodes = list(gm.graph.nodes)
    resolutions = {(int(v.shape[-2]), int(v.shape[-1])) for n, v in values.items()
                   if n.op == "call_module" and isinstance(modules.get(n.target), nn.Conv2d)
                   or n.op == "call_function" and n.target is F.conv2d}
    last_in_scope: dict[str, fx.Node] = {}
    repeated: set[str] = set()
    for n in nodes:
        for k in n.meta.get("nn_module_stack", {}):
            if "@" in k:
                repeated.add(k.split("@")[0])
            else:
                last_in_scope[k] = n
    found, presence = [], set()
    for n in nodes:
        if _is_activation(n, modules) or (n.op == "call_function" and n.target in _CONCATENATIONS
                                          and n.all_input_nodes
                                          and all(a in presence for a in n.all_input_nodes)):
            presence.add(n)
        hw = _spatial(values.get(n), resolutions) if n in presence else None
        if hw is not None:
            name = _node_name(n, modules, last_in_scope, repeated)
            if name is not None:
                found.append((hw, name))
    return _deepest_and_next(found)


def _deepest_and_next(found: list[tuple[tuple[int, int], str]]) -> list[str]:
    """The last name at the smallest resolution and the last at the next larger one, shallow
    first."""
    if not found:
        return []
    sizes = sorted({hw for hw, _ in found}, key=lambda hw: hw[0] * hw[1])
    chosen = [[n for hw, n in found if hw == size] for size in sizes[1::-1]]
    return [names[-1] for names in chosen]


def _presence_layers_hooks(model: nn.Module, input_size: int) -> list[str]:
    """The rule for models fx cannot trace: activation modules that run once, by forward hooks
    (function calls are invisible here)."""
    outputs = probe_outputs(model, (3, input_size, input_size))
    calls: dict[str, int] = {}
    for name, _, _ in outputs:
        calls[name] = calls.get(name, 0) + 1
    resolutions = {(int(o.shape[-2]), int(o.shape[-1])) for _, m, o in outputs
                   if isinstance(m, nn.Conv2d)}
    found = [(hw, name) for name, m, o in outputs
             if isinstance(m, ACTIVATIONS) and calls[name] == 1
             and (hw := _spatial(o, resolutions)) is not None]
    return _deepest_and_next(found)


def probe_outputs(model: nn.Module, image_shape: Sequence[int] = (3, 224, 224)
                  ) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of every named module that returns a tensor, in the order the
    modules finish, from one forward pass of a blank image; hooks are removed on exit."""
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = []

    def record(name, module):
        def hook(_m, _i, out):
            if torch.is_tensor(out):
                outputs.append((name, module, out))  # tensors kept alive: ids get reused
        return hook

    try:
        for name, m in model.named_modules():
            if name:
                hooks.append(m.register_forward_hook(record(name, m)))
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _refuse_token_models(model: nn.Module,
                         probed: list[tuple[str, nn.Module, torch.Tensor]]) -> None:
    """A model whose deep layers are tokens or channels-last maps after its last (N, C, H, W)
    map (the patch embedding), and that has no ReLU-like activation there, raises a LayerError:
    its stage outputs would be attention internals or a final norm, never a presence map."""
    resolutions = {tuple(o.shape[-2:]) for _, m, o in probed if isinstance(m, nn.Conv2d)}

    def channels_first(o: torch.Tensor) -> bool:
        return o.dim() == 4 and tuple(o.shape[-2:]) in resolutions

    last_map = max((i for i, (_, _, o) in enumerate(probed) if channels_first(o)), default=-1)
    for name, _, o in probed[last_map + 1:]:
        if _spatial(o, resolutions) is not None:
            raise LayerError(
                f"{type(model).__name__}'s deep layers are tokens ({name} returns "
                f"{tuple(o.shape)}) with no ReLU-like activation among them to be a default "
                f"layer (ViT, DeiT and Swin use their MLPs' GELU); name one with layers=")


def _stage_outputs(model: nn.Module, input_size: int) -> list[str]:
    pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    probed = probe_outputs(model, (3, input_size, input_size))
    _refuse_token_models(model, probed)
    outputs = [(name, isinstance(m, pooling), out) for name, m, out in probed if out.dim() == 4]
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
