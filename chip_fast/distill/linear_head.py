"""A tail that begins with per-channel ops and a Linear over the flattened maps: ``LinearHead``.

VGG's tail after conv5_3 is the pattern (ReLU, max-pool, average pool, flatten, then a
25088 x 4096 Linear): the Linear alone costs more per perturbed network than every other op of
the tail. With zero or mean fill the perturbation of channel k is ``m_k a_k + (1 - m_k) f_k`` with
a binary ``m_k``, and an op that acts on each channel alone (pooling, batch norm, an activation,
a depthwise convolution) maps it to ``m_k g(a_k) + (1 - m_k) g(f_k)``: the mask commutes with the
whole chain before the flatten. The Linear is then a sum over channels,

    Linear(flatten(x')) = sum_k m_k (A_vk - B_k) + sum_k B_k + b,

with ``A_vk = W_k . g(a_v)_k`` once per view and ``B_k = W_k . g(f)_k`` once per job. A perturbed
network costs a (K) x (K, O) product instead of the (K P) x (K P, O) one, and the chain runs once
per view instead of once per sample; the layers after the Linear (``rest``) run per sample as
before. The same masks give the same responses up to float rounding (the test compares the two
paths' importance), so the estimand does not change.

The pattern is recognised from the fx graph and checked numerically on the probe view with
random masks, like ``tails.affine_tail``; anything else takes the elementwise path.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.fx as fx
from torch import nn

from ..models.split import SplitModel
from .per_channel import agrees, masked_probe, per_channel, sub_graph

logger = logging.getLogger("chip_fast")

# (the order that sorts a batch's rows by view, on the device; the rows of each view and the
# distinct views, on the host)
ViewRuns = tuple[torch.Tensor, list[int], list[int]]

_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def _flattens(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` flattens (N, K, H, W) to (N, K H W) (checked numerically later)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.Flatten)
    if node.op == "call_function":
        return node.target is torch.flatten
    return node.op == "call_method" and node.target in _FLATTEN_METHODS


@dataclass
class LinearHead:
    """The tail as ``rest(Linear(flatten(chain(activation))))`` (see the module doc)."""
    chain: fx.GraphModule    # activation (N, K, H, W) -> per-channel maps (N, K, H', W')
    weight: torch.Tensor     # (K, P, O) float32: the Linear's weight by input channel
    bias: torch.Tensor       # (O,) float32
    rest: fx.GraphModule     # the Linear's output (N, O) -> logits (N, C)
    mutates_input: bool      # the chain writes into its input (an in-place ReLU)
    shape: tuple[int, ...]   # one view's activation (K, H, W)
    _job_fill: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def maps(self, acts: torch.Tensor) -> torch.Tensor:
        """(V, K, P) float32 maps of the views' activations after the chain: what a unit keeps
        of a view."""
        if self.mutates_input:
            acts = acts.clone()
        return self.chain(acts).float().flatten(2).contiguous()

    def fill_terms(self, fill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B (K, O), B.sum(0) + bias (O,)) of a per-channel fill value (K,): each channel's
        share of the Linear's output when that channel is filled."""
        fill = fill.to(self.weight.dtype)[None, :, None, None].expand(1, *self.shape)
        f = self.maps(fill.contiguous())[0]                           # (K, P)
        b = torch.bmm(f[:, None, :], self.weight)[:, 0]               # (K, O)
        return b, b.sum(0) + self.bias

    def job_fill(self, fill: str, mu: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fill terms of a job's fill (``"zero"``, or ``"mean"`` with the per-channel mean
        ``mu``), made once: the fill is fixed before the first unit."""
        if self._job_fill is None:
            value = mu if fill == "mean" else torch.zeros(self.shape[0], device=self.bias.device)
            self._job_fill = self.fill_terms(value)
        return self._job_fill

    def hidden(self, products: dict[int, torch.Tensor], runs: ViewRuns, masks: torch.Tensor,
               const: torch.Tensor) -> torch.Tensor:
        """(T, O) Linear outputs of a batch of perturbed networks: row t keeps channels
        ``masks[t]`` of its view. ``runs`` (``rows.Rows.view_runs``) sorts the batch by view, so
        each view is one (n, K) x (K, O) product with its ``products[view]`` (``ViewProducts``);
        ``const``: the fill terms' constant (``fill_terms``)."""
        order, counts, views = runs
        z = masks.to(torch.float32).index_select(0, order)
        by_view = torch.empty(len(order), len(const), dtype=torch.float32, device=z.device)
        start = 0
        for v, n in zip(views, counts):
            torch.addmm(const, z[start:start + n], products[v], out=by_view[start:start + n])
            start += n
        return torch.empty_like(by_view).index_copy_(0, order, by_view)

    def logits(self, products: dict[int, torch.Tensor], runs: ViewRuns, masks: torch.Tensor,
               const: torch.Tensor) -> torch.Tensor:
        """(T, C) float32 logits of a batch of perturbed networks (``hidden``, then the
        rest)."""
        return self.rest(self.hidden(products, runs, masks, const)).float()

    def unit_logits(self, maps: torch.Tensor, runs: list[ViewRuns], masks: list[torch.Tensor],
                    fill: tuple[torch.Tensor, torch.Tensor], budget: int
                    ) -> Iterator[torch.Tensor]:
        """The logits of a unit's batches, in order: batch i's rows keep ``masks[i]`` of their
        views (grouped by ``runs[i]``), the views' products made ahead within ``budget``
        bytes (``ViewProducts``)."""
        products = ViewProducts(self, maps, fill[0], [r[2] for r in runs], budget)
        for i, (r, m) in enumerate(zip(runs, masks)):
            yield self.logits(products.for_batch(i), r, m, fill[1])

    def plain_logits(self, maps: torch.Tensor) -> torch.Tensor:
        """(V, C) logits of the unperturbed views (every channel kept: no fill term)."""
        k, p, o = self.weight.shape
        return self.rest(torch.addmm(self.bias, maps.flatten(1), self.weight.view(k * p, o))
                         ).float()


def view_runs(view: torch.Tensor, device: torch.device) -> ViewRuns:
    """The ``ViewRuns`` of a batch whose rows perturb views ``view`` (host int64), built on
    the host so a batch reads nothing back from the device."""
    order = torch.argsort(view, stable=True)
    views, counts = torch.unique_consecutive(view[order], return_counts=True)
    return order.to(device), counts.tolist(), views.tolist()


class ViewProducts:
    """``A_v - B`` (K, O) of a unit's views for the head path (module doc). They are made ahead
    of the batches that need them, as many views per product as ``budget`` bytes hold, so the
    Linear's weight (K x P x O floats, 400 MB at VGG16) is read once for many views rather than
    once per batch; a view is dropped after the last batch that uses it.

    ``schedule``: the distinct views of each batch of the unit, in order (host)."""

    def __init__(self, head: "LinearHead", maps: torch.Tensor, fill_b: torch.Tensor,
                 schedule: list[list[int]], budget: int) -> None:
        self.head, self.maps, self.b, self.schedule = head, maps, fill_b, schedule
        self.last = {v: i for i, views in enumerate(schedule) for v in views}
        k, _, o = head.weight.shape
        self.cap = max(1, budget // (4 * k * o))
        self.cache: dict[int, torch.Tensor] = {}

    def for_batch(self, i: int) -> dict[int, torch.Tensor]:
        """The products of batch ``i``'s views (and of later ones, made with them)."""
        for v in [v for v in self.cache if self.last[v] < i]:
            del self.cache[v]
        todo = [v for v in self.schedule[i] if v not in self.cache]
        if todo:
            seen = set(todo)
            for views in self.schedule[i + 1:]:
                if len(self.cache) + len(todo) >= self.cap:
                    break
                todo += [v for v in views if v not in seen and v not in self.cache]
                seen.update(views)
            index = torch.tensor(todo).to(self.maps.device, non_blocking=True)
            a = torch.bmm(self.maps.index_select(0, index).transpose(0, 1), self.head.weight)
            a -= self.b[:, None, :]                                       # (K, J, O)
            self.cache.update((v, a[:, j]) for j, v in enumerate(todo))
        return self.cache


def perturbed_logits(head: "LinearHead", maps: torch.Tensor, view: torch.Tensor,
                     masks: torch.Tensor, fill: tuple[torch.Tensor, torch.Tensor]
                     ) -> torch.Tensor:
    """(T, C) logits of rows that keep ``masks[t]`` of view ``view[t]`` of ``maps``, in one
    batch (the check on the probe view, tests); the engine goes batch by batch."""
    runs = view_runs(view.cpu(), maps.device)
    products = ViewProducts(head, maps, fill[0], [runs[2]], 0).for_batch(0)
    return head.logits(products, runs, masks, fill[1])


def _pattern(tail: fx.GraphModule):
    """(chain nodes, flatten node, Linear node, rest nodes) of a tail of the pattern, or None."""
    modules = dict(tail.named_modules())
    nodes = list(tail.graph.nodes)
    source = next(n for n in nodes if n.op == "placeholder")
    chain, node = [], source
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        if per_channel(node, modules):
            chain.append(node)
        elif _flattens(node, modules):
            break
        else:
            return None
    flat = node
    users = list(flat.users)
    if len(users) != 1 or users[0].op != "call_module" or not isinstance(
            modules.get(users[0].target), nn.Linear):
        return None
    linear = users[0]
    head = {source, flat, linear, *chain}
    rest = [n for n in nodes if n not in head and n.op != "output"]
    # the rest must see the activation only through the Linear
    if any(a in head and a is not linear for n in rest for a in n.all_input_nodes):
        return None
    return chain, flat, linear, rest


def linear_head(split: SplitModel, layer: str, example: torch.Tensor) -> LinearHead | None:
    """The tail of ``layer`` as a LinearHead when it is one, else None. ``example``: an
    activation of the layer (V, K, H, W), on which the head is checked against the real tail
    with random masks."""
    tail = split.tails[layer]
    if tail.extras or example.dim() != 4:
        return None
    found = _pattern(tail.module)
    if found is None:
        return None
    chain_nodes, _, linear_node, rest_nodes = found
    out = next(n for n in tail.module.graph.nodes if n.op == "output")
    source = next(n for n in tail.module.graph.nodes if n.op == "placeholder")
    chain = sub_graph(tail.module, chain_nodes, None if chain_nodes else source,
                       chain_nodes[-1] if chain_nodes else source, "activation")
    rest = sub_graph(tail.module, rest_nodes, linear_node, out.args[0], "hidden")
    linear = tail.module.get_submodule(linear_node.target)
    k = example.shape[1]
    with torch.inference_mode():
        maps = chain(example.clone()).flatten(2)
        p = maps.shape[2]
        if maps.shape[1] != k or linear.in_features != k * p:
            return None
        weight = linear.weight.detach().float().view(-1, k, p).permute(1, 2, 0).contiguous()
        bias = (linear.bias.detach().float() if linear.bias is not None
                else torch.zeros(linear.out_features, device=example.device))
        head = LinearHead(chain, weight, bias, rest, tail.mutates_input, tuple(example.shape[1:]))
        if not _checks_out(head, tail.module, example[:1]):
            logger.info("chip_fast: the tail of %s looks like per-channel ops and a Linear but "
                        "does not check out", layer)
            return None
    return head


def _checks_out(head: LinearHead, tail: nn.Module, example: torch.Tensor) -> bool:
    """Whether the head gives the tail's logits on ``example`` (1, K, H, W) under random masks
    with zero fill."""
    masks, want = masked_probe(tail, example)
    fill = head.fill_terms(torch.zeros(example.shape[1], device=example.device))
    got = perturbed_logits(head, head.maps(example), torch.zeros(len(masks), dtype=torch.long),
                           masks, fill)
    return agrees(got, want)
