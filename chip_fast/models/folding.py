"""What the split does to a traced graph before running it: functional convolutions become
modules (``convs_as_modules``), so that batch norms fold into them (``fold_batch_norms``) and a
CPU fuses them with their activations (``cpu_fusion``).

EfficientNet-Lite's and timm's 'same' convolutions (``F.pad`` and ``torch.conv2d`` on a weight
attribute) trace as functions, which the folding did not see: their batch norms ran unfolded,
about 40% of a forward on a CPU, and each zero pad copied its input. The modules made here
share the model's parameters; a symmetric constant zero pad before the convolution becomes its
padding (the same zeros), an asymmetric one (a stride-2 'same' convolution) stays a pad.

Owns these graph rewrites; cutting the graph is ``split``'s.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def simplified(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with its functional convolutions as modules, the blocks the trace kept whole
    opened where no output needs them whole, and batch norms folded, in place."""
    return fold_batch_norms(inline_leaf_blocks(convs_as_modules(gm)))


# What a block the trace kept whole (a distilled layer, e.g. torchvision's Conv2dNormActivation)
# may hold to be opened: each of these takes one input and returns one output.
_INLINE = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish,
           nn.Identity)


def inline_leaf_blocks(gm: fx.GraphModule) -> fx.GraphModule:
    """Replace each call of a Sequential of convolutions, batch norms and activations by calls
    of its members, in place, unless the graph returns the block's value (a prefix returns a
    distilled layer's activation by that node). A distilled layer is a leaf of the trace, so
    inside another layer's tail (MobileNetV2's ``features.18`` after ``features.14.conv.0``) its
    batch norm ran unfolded and its activation unfused in every perturbed network."""
    modules = dict(gm.named_modules())
    returned = {n for node in gm.graph.nodes if node.op == "output"
                for n in node.all_input_nodes}
    changed = False
    for node in list(gm.graph.nodes):
        block = modules.get(node.target) if node.op == "call_module" else None
        if (not isinstance(block, nn.Sequential) or node in returned or len(node.args) != 1
                or node.kwargs or not len(block)
                or not all(type(m) in _INLINE for m in block)):
            continue
        value = node.args[0]
        with gm.graph.inserting_before(node):
            for i in range(len(block)):
                value = gm.graph.call_module(f"{node.target}.{i}", (value,))
        node.replace_all_uses_with(value)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()
    return gm


_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def _pair(v) -> tuple[int, int] | None:
    v = (v, v) if isinstance(v, int) else tuple(v) if isinstance(v, (tuple, list)) else None
    return v if v is not None and len(v) == 2 and all(isinstance(i, int) for i in v) else None


def _zero_pad(node: fx.Node) -> tuple[int, int] | None:
    """(top, left) of a constant zero pad that is the same on both sides of each spatial axis."""
    if node.op != "call_function" or node.target is not F.pad or len(node.users) != 1:
        return None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
    if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (tuple, list)) \
            or len(pad) != 4 or not all(isinstance(p, int) and p >= 0 for p in pad):
        return None
    left, right, top, bottom = pad
    return (top, left) if left == right and top == bottom else None


def convs_as_modules(gm: fx.GraphModule) -> fx.GraphModule:
    """Every ``torch.conv2d`` / ``F.conv2d`` call on parameters of ``gm`` (weight, and bias or
    None) with numeric arguments becomes a call of an ``nn.Conv2d`` sharing them; a symmetric
    zero pad feeding only it becomes its padding. In place; returns ``gm``."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (torch.conv2d, F.conv2d):
            continue
        a = dict(_CONV_DEFAULTS, **dict(zip(_CONV_ARGS, node.args)), **node.kwargs)
        weight, bias = a["weight"], a["bias"]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or not (
                bias is None or isinstance(bias, fx.Node) and bias.op == "get_attr"):
            continue
        w = _parameter(gm, weight.target)
        b = _parameter(gm, bias.target) if bias is not None else None
        stride, padding, dilation = (_pair(a[k]) for k in ("stride", "padding", "dilation"))
        groups = a["groups"]
        if w is None or w.dim() != 4 or (bias is not None and b is None) or None in (
                stride, padding, dilation) or not isinstance(groups, int):
            continue
        source = a["input"]
        pad = _zero_pad(source) if isinstance(source, fx.Node) else None
        if pad is not None:
            padding = (padding[0] + pad[0], padding[1] + pad[1])
        conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, padding,
                         dilation, groups, bias=b is not None, device="meta")
        conv.weight, conv.bias = w, b
        conv.train(gm.training)
        name = f"chip_fast_conv_{node.name}"
        gm.add_submodule(name, conv)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (source.args[0] if pad is not None else source,))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        for dead in (source if pad is not None else None, weight, bias):
            if isinstance(dead, fx.Node) and not dead.users:
                gm.graph.erase_node(dead)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _parameter(gm: fx.GraphModule, target: str) -> nn.Parameter | None:
    """The parameter ``target`` names, None where it names a buffer or nothing."""
    try:
        return gm.get_parameter(target)
    except AttributeError:
        return None


def fold_batch_norms(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every eval-mode BatchNorm that directly follows a convolution into a copy of that
    convolution (torch.nn.utils.fusion.fuse_conv_bn_eval), in ``gm``'s graph; the model's own
    modules are untouched and the rest stays shared. Unfolded batch norms cost a large share of a
    forward pass on a CPU (docs/design.md); on GPUs folding saves a pass per
    convolution. Layers that are leaves of the trace (a whole block) keep their norms."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    modules = dict(gm.named_modules())
    changed = False
    for node in list(gm.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        # Exactly BatchNorm2d: subclasses such as timm's BatchNormAct2d (a leaf when traced
        # with timm's registry) also apply an activation, which folding would drop.
        if type(bn) is not nn.BatchNorm2d or bn.training or len(node.args) != 1:
            continue
        conv_node = node.args[0]
        conv = modules.get(conv_node.target) if isinstance(conv_node, fx.Node) and \
            conv_node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or conv.training or len(conv_node.users) != 1:
            continue
        name = f"chip_fast_folded_{conv_node.name}"
        gm.add_submodule(name, fuse_conv_bn_eval(conv, bn))
        conv_node.target = name
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()
    return gm
