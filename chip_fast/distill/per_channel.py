"""Which ops after a cut act on each channel alone, and how a tail's fx graph is cut into
modules: shared by the two paths that run such ops once per view instead of once per perturbed
network (``linear_head`` and ``chain_per_view``).

With zero or mean fill a perturbed channel is ``m_k a_k + (1 - m_k) f_k`` with a binary
``m_k``, and an op that acts on each channel alone (an activation, batch norm, pooling, a
depthwise convolution) maps it to ``m_k g(a_k) + (1 - m_k) g(f_k)``: the mask commutes with it.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

_PER_CHANNEL_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish,
                        nn.Sigmoid, nn.Tanh, nn.ELU, nn.MaxPool2d, nn.AvgPool2d,
                        nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm2d, nn.Identity)
_PER_CHANNEL_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.silu, F.gelu, F.hardswish, torch.sigmoid,
                          torch.tanh, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                          F.adaptive_max_pool2d}


def per_channel(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` acts on each channel of its input alone (the paths' numerical checks
    catch what this structural test lets through)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            return not m.training
        if isinstance(m, nn.Conv2d):   # depthwise: one filter per channel
            return m.groups == m.in_channels == m.out_channels
        return isinstance(m, _PER_CHANNEL_MODULES)
    if node.op == "call_function":
        if node.target in (F.conv2d, torch.conv2d):
            return _depthwise_call(node, modules)
        if node.target is F.pad:   # a 'same' convolution's padding, traced as its own call
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad", ())
            return mode == "constant" and len(pad) <= 4   # the two spatial dims alone
        return node.target in _PER_CHANNEL_FUNCTIONS
    return False


def _depthwise_call(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a functional conv2d is depthwise: its weight (a module's attribute) has one
    input channel per group and as many groups as output channels. The split turns functional
    convolutions on parameters into modules (``models.folding``: EfficientNet-Lite's 'same'
    convolutions), so this sees only those it leaves as calls, e.g. on a buffer."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return False
    owner, _, name = weight.target.rpartition(".")
    w = getattr(modules.get(owner), name, None)
    return (isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[1] == 1
            and groups == w.shape[0])


def sub_graph(root: nn.Module, nodes: list[fx.Node], start: fx.Node | None, end: fx.Node,
              name: str) -> fx.GraphModule:
    """A module of ``nodes`` (in order) whose input is ``start`` (a placeholder stands for it;
    None: the first node's input is the graph's placeholder) and whose output is ``end``."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = g.placeholder(name)
    for n in nodes:
        for a in n.all_input_nodes:
            if a not in env and a.op in ("get_attr", "placeholder"):
                env[a] = (g.node_copy(a, lambda x: env[x]) if a.op == "get_attr"
                          else g.placeholder(name))
        env[n] = g.node_copy(n, lambda x: env[x])
    g.output(env[end])
    return fx.GraphModule(root, g)


def masked_probe(tail: nn.Module, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(masks (8, K), the tail's float32 logits on ``example`` (1, K, H, W) under them with
    zero fill): what a path's numerical check compares with (a fixed generator: the same
    decision every run)."""
    gen = torch.Generator().manual_seed(0)
    masks = (torch.rand(8, example.shape[1], generator=gen) < 0.5).to(example.device)
    perturbed = example.float() * masks[:, :, None, None]
    return masks, tail(perturbed.to(example.dtype)).float()


def agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether a path's logits are the tail's (``masked_probe``) to float rounding."""
    if got.shape != want.shape or not torch.isfinite(got).all():
        return False
    scale = want.abs().max().clamp(min=1e-6)
    return bool((got - want).abs().max() <= 1e-4 * scale)
