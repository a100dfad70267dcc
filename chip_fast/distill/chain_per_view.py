"""A tail that begins with per-channel ops, run on a perturbed network from after them: the
``chain_per_view`` path.

With zero fill, channel k of a perturbed network is ``m_k a_k`` with a binary ``m_k``, and a run
of per-channel ops ``g`` right after the cut (``per_channel``) maps it to
``m_k g(a)_k + (1 - m_k) g(0)_k``. So ``g`` runs once per view, and each perturbed network
perturbs ``g(a)`` with the fill ``g(0)`` and runs only the rest of the tail. MobileNetV2's and
EfficientNet-Lite's expand convolutions are followed by a depthwise convolution, batch norm and
ReLU6: the rest then starts from the depthwise convolution's output, a quarter of the elements
behind a stride-2 block, and a unit keeps that smaller map of each view.

Taken only where ``g(0)`` is one value per channel at every position (a depthwise convolution
of zeros is its bias everywhere, padding included), so the perturbation stays a per-channel fill:
a mean fill's constant map turns uneven at the padded border and noise is drawn per element;
those tails stay elementwise. The estimand does not change: the same masks give the same
responses up to float rounding, checked on the probe view with random masks as ``linear_head``
checks its path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..models.split import SplitModel, Tail, mutates_first_argument
from .per_channel import agrees, masked_probe, per_channel, sub_graph

logger = logging.getLogger("chip_fast")


@dataclass
class ChannelChain:
    """A tail as ``rest(chain(activation))``, ``chain`` per-channel ops (see the module doc)."""
    chain: fx.GraphModule    # activation (N, K, H, W) -> maps (N, K, H', W')
    rest: Tail               # maps -> logits
    fill: torch.Tensor       # (K,) float32: g(0), the fill of a dropped channel after the chain
    mutates_input: bool      # the chain writes into its input (an in-place ReLU)
    # how ``ops.perturb`` applies ``fill``: "zero" where g(0) is 0 (a ReLU-only chain), else
    # "mean" with ``fill`` as the per-channel value; decided once, so no unit reads the device
    fill_kind: str = "mean"

    def maps(self, acts: torch.Tensor) -> torch.Tensor:
        """The chain's float32 maps of the views' activations: what a unit keeps of a view."""
        if self.mutates_input:
            acts = acts.clone()
        return self.chain(acts).float()

    def perturbed(self, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The rest's input for rows that keep ``masks`` (T, K) of ``maps`` (T, K, H', W')
        (the probe check and tests; the engine perturbs through ``ops.perturb``)."""
        keep = masks[:, :, None, None]
        return torch.where(keep, maps, self.fill[None, :, None, None].to(maps.dtype))


def chain_per_view(split: SplitModel, layer: str, example: torch.Tensor, fill: str
                   ) -> ChannelChain | None:
    """The tail of ``layer`` as a ChannelChain when it begins with per-channel ops and the fill
    allows it, else None. ``example``: an activation of the layer (V, K, H, W), on which the
    chain is checked against the real tail with random masks."""
    tail = split.tails[layer]
    if fill != "zero" or tail.extras or example.dim() != 4:
        return None
    module = tail.module
    modules = dict(module.named_modules())
    nodes = list(module.graph.nodes)
    source = next(n for n in nodes if n.op == "placeholder")
    chain_nodes, node = [], source
    # Every node of the chain but the last has one user, so the rest sees the activation only
    # through the chain's end.
    while len(node.users) == 1 and per_channel(next(iter(node.users)), modules):
        node = next(iter(node.users))
        chain_nodes.append(node)
    if not chain_nodes:
        return None
    end = chain_nodes[-1]
    out = next(n for n in nodes if n.op == "output")
    inside = {source, *chain_nodes}
    rest_nodes = [n for n in nodes if n not in inside and n.op != "output"]
    chain = sub_graph(module, chain_nodes, None, end, "activation")
    rest_module = sub_graph(module, rest_nodes, end, out.args[0], "maps")
    rest_modules = dict(rest_module.named_modules())
    rest_source = next(n for n in rest_module.graph.nodes if n.op == "placeholder")
    rest_mutates = any(u.args and u.args[0] is rest_source
                       and mutates_first_argument(u, rest_modules) for u in rest_source.users)
    with torch.inference_mode():
        zeros = torch.zeros_like(example[:1]).contiguous(memory_format=torch.channels_last)
        g0 = chain(zeros).float()
        if g0.dim() != 4 or g0.shape[1] != example.shape[1]:
            return None
        value = g0[0, :, :1, :1]
        if not torch.equal(g0[0], value.expand_as(g0[0])):
            return None
        fill_value = value.flatten().contiguous()
        found = ChannelChain(chain, Tail(rest_module, [], rest_mutates), fill_value,
                             tail.mutates_input, "mean" if bool(fill_value.any()) else "zero")
        if not _checks_out(found, module, example[:1]):
            logger.info("chip_fast: the tail of %s begins with per-channel ops but running them "
                        "once per view does not check out", layer)
            return None
    return found


def _checks_out(found: ChannelChain, tail: torch.nn.Module, example: torch.Tensor) -> bool:
    """Whether the chain and the rest give the tail's logits on ``example`` (1, K, H, W) under
    random masks with zero fill."""
    masks, want = masked_probe(tail, example)
    maps = found.maps(example).expand(len(masks), -1, -1, -1)
    got = found.rest.module(found.perturbed(maps, masks).to(example.dtype)).float()
    return agrees(got, want)
