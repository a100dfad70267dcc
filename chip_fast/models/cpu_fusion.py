"""Convolutions and the activation right after them as one oneDNN call, on CPUs.

PyTorch's eager CPU convolution writes its output, and a following ReLU6 reads and writes it
again: a memory-bound pass that costs a sixth of MobileNetV2's tail at 7 x 7 in bfloat16 and a
tenth of its prefix in float32 (docs/design.md, "Measured choices"). oneDNN applies the
activation inside the convolution (a post-op) when called through
``torch.ops.mkldnn._convolution_pointwise``, the op PyTorch's own compiler (inductor) emits for
the same pattern; using it directly avoids a compile step that would cost more than a job's
tails on a small machine. The result is the same computation in the same order; a fused
module is only used after it has given the unfused module's values on a real input
(``FusedOnCpu``), and anything unexpected (an older PyTorch without the op, a build without
oneDNN) leaves the unfused module in place.

Only inference: the op has no backward, so gradients (the view slopes, the atlas's receptive
fields) go through the unfused modules.
Owns the rewrite and its check; where modules are run is ``split``'s and ``distill.tails``'.
"""
from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("chip_fast")

# module type -> (oneDNN post-op, its scalars)
_MODULES: dict[type, Callable[[nn.Module], tuple[str, list]]] = {
    nn.ReLU: lambda m: ("relu", []),
    nn.ReLU6: lambda m: ("hardtanh", [0.0, 6.0]),
    nn.Hardtanh: lambda m: ("hardtanh", [float(m.min_val), float(m.max_val)]),
    nn.SiLU: lambda m: ("swish", []),
    nn.Hardswish: lambda m: ("hardswish", []),
}


def _hardtanh_args(node: fx.Node) -> tuple[str, list] | None:
    args = list(node.args[1:3])
    lo = node.kwargs.get("min_val", args[0] if args else -1.0)
    hi = node.kwargs.get("max_val", args[1] if len(args) > 1 else 1.0)
    if not all(isinstance(v, (int, float)) for v in (lo, hi)):
        return None
    return "hardtanh", [float(lo), float(hi)]


_FUNCTIONS: dict[Callable, Callable[[fx.Node], tuple[str, list] | None]] = {
    F.relu: lambda n: ("relu", []),
    torch.relu: lambda n: ("relu", []),
    F.relu6: lambda n: ("hardtanh", [0.0, 6.0]),
    F.hardtanh: _hardtanh_args,
    F.silu: lambda n: ("swish", []),
    F.hardswish: lambda n: ("hardswish", []),
}


def available() -> bool:
    """Whether this PyTorch has the fused op and oneDNN to run it."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_convolution_pointwise")


def _post_op(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, list] | None:
    """The oneDNN post-op that ``node`` computes from its first argument alone, if any."""
    if node.op == "call_module":
        rule = _MODULES.get(type(modules.get(node.target)))
        return rule(modules[node.target]) if rule else None
    if node.op == "call_function" and node.target in _FUNCTIONS and len(node.args) >= 1:
        return _FUNCTIONS[node.target](node)
    return None


def _fusible_conv(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Conv2d | None:
    conv = modules.get(node.target) if node.op == "call_module" else None
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" \
            or isinstance(conv.padding, str) or len(node.users) != 1 or len(node.args) != 1:
        return None
    return conv


def fused_copy(gm: fx.GraphModule) -> fx.GraphModule | None:
    """A GraphModule computing what ``gm`` computes, with every convolution whose only user is
    an activation oneDNN can apply fused with it; it shares ``gm``'s parameters (a later cast
    of ``gm``'s modules is seen by both). None where nothing fuses or the op is missing."""
    if not available():
        return None
    graph = copy.deepcopy(gm.graph)
    modules = dict(gm.named_modules())
    fused = 0
    for node in list(graph.nodes):
        conv = _fusible_conv(node, modules)
        if conv is None:
            continue
        user = next(iter(node.users))
        post = _post_op(user, modules)
        if post is None or user.args[0] is not node:
            continue
        with graph.inserting_before(user):
            weight = graph.get_attr(f"{node.target}.weight")
            bias = graph.get_attr(f"{node.target}.bias") if conv.bias is not None else None
            call = graph.call_function(
                torch.ops.mkldnn._convolution_pointwise,
                (node.args[0], weight, bias, list(conv.padding), list(conv.stride),
                 list(conv.dilation), conv.groups, post[0], post[1], ""))
        user.replace_all_uses_with(call)
        graph.erase_node(user)
        graph.erase_node(node)
        fused += 1
    if not fused:
        return None
    graph.lint()
    return fx.GraphModule(gm, graph)


def _same(a, b, rtol: float) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and bool(
            torch.allclose(a.float(), b.float(), rtol=rtol, atol=rtol * float(
                a.float().abs().max().clamp(min=1e-6)), equal_nan=True))
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(
            _same(x, y, rtol) for x, y in zip(a, b))
    return a == b


class FusedOnCpu:
    """``module`` with its fused copy: ``for_inputs`` on the first CPU call decides, by
    running both on ``inputs`` (copies, for modules that write into their input), which one
    every later CPU call gets. Off the CPU and where gradients are recorded (the op has no
    backward: the atlas's receptive fields differentiate the prefix) the unfused module runs,
    and under autocast too unless every convolution's weight already has autocast's dtype (the
    fused op is not autocast-aware: it computes in its inputs' dtype, then the one autocast
    picks)."""

    def __init__(self, module: fx.GraphModule, name: str) -> None:
        self.module, self.name = module, name
        self.fused: fx.GraphModule | None = None
        self.decided = False
        self._weight_dtypes: set[torch.dtype] | None = None   # of its convolutions

    def for_inputs(self, *inputs: torch.Tensor) -> Callable:
        """The module to run on ``inputs``."""
        if inputs[0].device.type != "cpu" or torch.is_grad_enabled() or not self._autocast_ok():
            return self.module
        if not self.decided:
            self._decide(inputs)
        return self.fused if self.fused is not None else self.module

    def _decide(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.decided = True
        try:
            fused = fused_copy(self.module)
            if fused is None:
                return
            rows = tuple(t[:2].clone() if torch.is_tensor(t) else t for t in inputs)
            with torch.no_grad():
                want = self.module(*[t.clone() if torch.is_tensor(t) else t for t in rows])
                got = fused(*rows)
            low = any(t.dtype != torch.float32 for t in rows if torch.is_tensor(t))
            rtol = 1e-2 if low or torch.is_autocast_enabled("cpu") else 1e-4
            if _same(want, got, rtol):
                self.fused = fused
            else:
                logger.info("chip_fast: the fused CPU %s differs from the unfused one; "
                            "running it unfused", self.name)
        except Exception as e:  # noqa: BLE001 - any failure means: run the unfused module
            logger.info("chip_fast: no fused CPU %s (%s: %s)", self.name, type(e).__name__, e)

    def _autocast_ok(self) -> bool:
        if not torch.is_autocast_enabled("cpu"):
            return True
        if self._weight_dtypes is None:   # read once: a tail casts its weights before
            self._weight_dtypes = {m.weight.dtype for m in self.module.modules()
                                   if isinstance(m, nn.Conv2d)}
        return self._weight_dtypes <= {torch.get_autocast_dtype("cpu")}
