"""The hot loop of distillation: one unit (class group x sample block) to partial sums.

A unit loads the few image views its samples use (decoded ahead, while the previous unit runs),
runs the prefix (input -> layers) on them once, then per layer turns batches of rows (one row =
one perturbed network of one class; a batch mixes the group's classes) into responses y and adds
z * y, y and y^2 per (class, fold) in float64:

* affine tails (``tails.AffineTail``): ``perturb_means`` gives each row's perturbed spatial
  mean, the tail is one product per row; nothing of the activation's size is made per sample.
* other tails: ``perturb`` writes each row's perturbed activation once, in the dtype and
  layout the tail consumes (on CUDA straight into the tail's CUDA graph input), and the tail
  runs on the batch (``tails.TailRunner``).

On CUDA nothing between a unit's first and last batch reads the device: indices are built on
the host once per unit (``rows``), and a batch is the perturbation kernel, the tail's CUDA-graph
replay and the response sums kernel (which gathers each row's logit, subtracts the baseline and
adds into the unit's sums). ``collect`` waits for one unit's pinned copy of its sums while the
next one runs; a non-finite response shows in them (a float64 sum of float32 values is finite
exactly when all of them are) and is found again only then. With the view-slope control
variate (``slopes``) a unit also takes each view's mask gradient, once; a distil-until-stable
job takes it, and the baseline, once per view for all its stages (``view_terms``).

Owns the prefix and tail passes and the fill statistics pass; the views are ``views``', the
rows ``rows``'; the model's sizes and tails come resolved (``inputs``); it reads the plan and
never writes the job's state or files.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..ops.backend import use_triton
from ..ops.perturb import perturb
from ..ops.perturb_means import perturb_means
from ..ops.response_sums import UnitSums
from .inputs import JobInputs
from .plan import DistillPlan, Unit
from .rows import Rows, make_rows
from .settings import DistillSettings
from .slopes import ControlBatches
from .stage_prefixes import StagePrefixes
from .state import Partial
from .chain_per_view import ChannelChain
from .linear_head import LinearHead
from .non_finite import raise_non_finite
from .tails import AffineTail, TailRunner, no_sync_checks, response_matrix
from .view_terms import ViewTerms, tail_input
from .views import ViewLoader

# Called after every prefix pass with the (class, view) keys of the batch, the views themselves
# (preprocessed, on the device) and the prefix outputs; a view may be seen more than once (the
# fill statistics pass, then its unit), so an observer that counts views dedupes by key.
PrefixObserver = Callable[[list[tuple[int, int]], torch.Tensor, dict[str, torch.Tensor]], None]

# Rows per batch on the affine path: only (rows x channels) values per batch, so large batches.
AFFINE_BATCH = 4096
# The fill statistics pass keeps what the units need of its views (spatial means for affine
# layers, activations otherwise) when that fits here, so no view runs the prefix twice.
VIEW_CACHE_BYTES = 512 * 2**20
# What a distil-until-stable job keeps of its class group's views between stages
# (``stage_prefixes``): MobileNetV2's 14x14 layer for 8 classes of 300 photos is about 1 GiB.
STAGE_CACHE_BYTES = 4 * 2**30
# The head path's per-view products made at once (``linear_head.ViewProducts``): 32 views of
# VGG16's conv5_3, so its 400 MB Linear weight is read once per 32 views.
HEAD_PRODUCT_BYTES = 256 * 2**20


@dataclass
class Launched:
    """A unit whose work is queued: its sums (on CUDA, host copies that are valid once
    ``ready`` has passed), and what it took to find a non-finite response again."""
    plan: DistillPlan
    unit: Unit
    rows: Rows
    inputs: dict[str, torch.Tensor]
    prefix_out: dict[str, torch.Tensor] | None
    sums: dict[str, tuple[torch.Tensor, ...]]
    ready: torch.cuda.Event | None = None


class UnitRunner:
    """Runs units of one job on one device."""

    def __init__(self, inputs: JobInputs, settings: DistillSettings, device: torch.device) -> None:
        self.split = inputs.split
        self.source = inputs.source
        self.settings = settings
        self.device = device
        self.views = ViewLoader(inputs.source, settings, device)
        self.observers: list[PrefixObserver] = []   # e.g. the channel atlas
        self.affine: dict[str, AffineTail] = inputs.affine
        self.tails: dict[str, TailRunner] = inputs.tails
        self.heads: dict[str, LinearHead] = inputs.heads
        self.chains: dict[str, ChannelChain] = inputs.chains
        self.elements: dict[str, int] = inputs.elements
        # (class, view) -> what the units need of it per layer, from the fill statistics pass
        self.cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self.stage: StagePrefixes | None = None   # a distil-until-stable job's kept views
        self.terms = ViewTerms(inputs, settings)
        # Whether the batches run the Triton kernels (the ops ask the same per call).
        self.kernels = use_triton(torch.empty(0, device=device))
        self.prefix_dtype = torch.bfloat16 if settings.prefix_dtype == "bfloat16" else None

    # -- views and the prefix ---------------------------------------------------------------
    def load_views(self, pairs: list[tuple[int, int]], pending=None) -> torch.Tensor:
        """The (class, view) pairs as one batch, in a fixed order (``views.ViewLoader``)."""
        return self.views.load(pairs, pending)

    def prefix(self, views: torch.Tensor, keys: list[tuple[int, int]] | None = None
               ) -> dict[str, torch.Tensor]:
        """The prefix outputs of ``views``; with their (class, view) ``keys``, the observers see
        them too."""
        outs: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(views), self.settings.batch_size):
            x = views[i:i + self.settings.batch_size].to(self.device, non_blocking=True)
            if x.dim() == 4:   # channels-last convolutions are faster on a CPU (docs/design.md)
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(self.split.run_prefix(x, self.prefix_dtype))
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        if keys is not None:
            for observe in self.observers:
                observe(keys, views, out)
        return out

    def caches_views(self, plan: DistillPlan) -> bool:
        """Whether the fill statistics pass keeps its views for the units: when no tail reads
        other prefix values and what the units need of the pass's views fits VIEW_CACHE_BYTES.
        Decided from the plan alone, so every process decides alike."""
        if self._tails_read_other_values(plan):
            return False
        per_view = sum(4 * plan.channels[l] * (1 if l in self.affine else self.elements[l])
                       for l in plan.layers)
        return len(plan.fill_views()) * per_view <= VIEW_CACHE_BYTES

    def _unit_input(self, layer: str, acts: torch.Tensor) -> torch.Tensor:
        """What the units use of a layer's activations: spatial means on the affine path, the
        maps after the per-channel ops on the head and chain_per_view paths."""
        if layer in self.affine:
            return acts.float().mean(tuple(range(2, acts.dim())))
        if layer in self.heads:
            return self.heads[layer].maps(acts)
        if layer in self.chains:
            return self.chains[layer].maps(acts)
        return acts

    def fill_statistics(self, plan: DistillPlan) -> tuple[dict[str, torch.Tensor],
                                                          dict[str, torch.Tensor]]:
        """Per-channel mean and std of every layer over the fill views
        (``DistillPlan.fill_views``); with ``caches_views``, the units' inputs of those views
        are kept."""
        order = plan.fill_views()
        keep = self.caches_views(plan)
        s1 = {l: 0.0 for l in plan.layers}
        s2 = {l: 0.0 for l in plan.layers}
        count = 0
        with torch.inference_mode():
            for i in range(0, len(order), self.settings.batch_size):
                keys = order[i:i + self.settings.batch_size]
                out = self.prefix(self.load_views(keys), keys)
                for l in plan.layers:
                    acts = self.split.activation(out, l)
                    a = acts.double().transpose(0, 1).flatten(1)
                    s1[l] = s1[l] + a.sum(1)
                    s2[l] = s2[l] + (a * a).sum(1)
                    if keep:
                        for key, x in zip(keys, self._unit_input(l, acts)):
                            self.cache.setdefault(key, {})[l] = x
                count += a.shape[1]
        mu, sigma = {}, {}
        for l in plan.layers:
            mean = s1[l] / count
            var = (s2[l] / count - mean * mean).clamp(min=0)
            mu[l] = mean.float().to(self.device)
            sigma[l] = var.sqrt().float().to(self.device)
        return mu, sigma

    # -- one unit ---------------------------------------------------------------------------
    def _batch(self, layer: str) -> int:
        return AFFINE_BATCH if layer in self.affine else self.settings.batch_size

    def prepare(self, plan: DistillPlan, unit: Unit) -> tuple[Rows, object]:
        """A unit's rows and the decoding of its views not in the cache, started now (call it
        for the units ahead before waiting on this one, so decoding overlaps the work)."""
        kernel_batches = sorted({self._batch(l) for l in plan.layers
                                 if plan.estimators[l] != "exact"}) if self.kernels else []
        rows = make_rows(plan, unit, self.device, kernel_batches)
        stage = self._stage_prefixes(plan)
        if stage is not None:
            todo = [k for chunk in stage.chunks(rows.keys, plan.views.views,
                                                self.cache.__contains__) for k in chunk]
            return rows, (todo, self.views.submit(todo))
        return rows, self.views.submit([k for k in rows.keys if k not in self.cache])

    def _tails_read_other_values(self, plan: DistillPlan) -> bool:
        """Whether a layer's tail reads prefix values besides its layer (then a unit needs its
        views' whole prefix outputs, and no kept unit input serves it)."""
        return any(self.split.tails[l].extras for l in plan.layers)

    def _stage_prefixes(self, plan: DistillPlan) -> StagePrefixes | None:
        """The kept views of a job of several stages whose tails read only their layer."""
        if len(plan.stages) == 1 or self._tails_read_other_values(plan):
            return None
        if self.stage is None:
            self.stage = StagePrefixes(self.settings.batch_size, STAGE_CACHE_BYTES)
        return self.stage

    def _inputs(self, plan: DistillPlan, rows: Rows, pending, group: int, mu: dict):
        """(the units' input of every layer for the rows' views, in their order; the prefix
        outputs of the views computed now, or None when every view came from the cache or
        the stage's kept views; the views' kept terms (``view_terms``), or {})."""
        stage = self._stage_prefixes(plan)
        if stage is not None:
            return self._stage_inputs(plan, rows, pending, stage, group, mu)
        todo = [k for k in rows.keys if k not in self.cache]
        if not todo:
            return {l: torch.stack([self.cache[k][l] for k in rows.keys])
                    for l in plan.layers}, None, {}
        prefix_out = self.prefix(self.load_views(todo, pending), todo)
        fresh = {l: self._unit_input(l, self.split.activation(prefix_out, l))
                 for l in plan.layers}
        if len(todo) == len(rows.keys):    # the usual case at scale: no copy
            return fresh, prefix_out, {}
        at = {k: i for i, k in enumerate(todo)}
        return {l: torch.stack([self.cache[k][l] if k in self.cache else fresh[l][at[k]]
                                for k in rows.keys]) for l in plan.layers}, prefix_out, {}

    def _stage_inputs(self, plan: DistillPlan, rows: Rows, pending, stage: StagePrefixes,
                      group: int, mu: dict):
        """The rows' inputs and terms from the group's kept views, computing what is missing."""
        def compute(views: torch.Tensor, chunk: list) -> dict[str, torch.Tensor]:
            out = self.prefix(views, chunk)
            return {l: self._unit_input(l, self.split.activation(out, l)) for l in plan.layers}

        def derive(acts: dict[str, torch.Tensor], keys: list) -> dict[str, torch.Tensor]:
            cls = torch.tensor([c for c, _ in keys], device=self.device)
            return self.terms.of(plan, acts, cls, mu)
        stage.start_group(group)
        inputs, terms = stage.inputs(rows.keys, plan.views.views, self.cache, pending,
                                     self.load_views, compute,
                                     derive if self.terms.needed(plan) else None)
        return inputs, None, terms

    def launch(self, plan: DistillPlan, unit: Unit, mu: dict[str, torch.Tensor],
               sigma: dict[str, torch.Tensor], prepared: tuple[Rows, object] | None = None,
               on_batch: Callable[[int], None] | None = None) -> "Launched":
        """Queue a unit's work (on CUDA it runs asynchronously; ``collect`` waits for it).
        ``prepared``: what ``prepare`` returned for this unit; ``on_batch(samples)`` follows
        each batch (progress)."""
        rows, pending = prepared if prepared is not None else self.prepare(plan, unit)
        n_rows = len(plan.unit_classes(unit)) * plan.settings.folds
        with torch.inference_mode():
            inputs, prefix_out, terms = self._inputs(plan, rows, pending, unit.group, mu)
            sums = {}
            with no_sync_checks(self.device):
                if not terms:   # not kept between stages: this unit's views' own
                    terms = self.terms.of(plan, inputs, rows.key_cls, mu, prefix_out)
                for layer in plan.layers:
                    if plan.estimators[layer] == "exact":
                        sums[layer] = self._exact_sums(layer, inputs[layer], rows, n_rows, mu)
                        if on_batch is not None:
                            on_batch(len(rows))
                        continue
                    sums[layer] = self._layer_sums(layer, inputs[layer], prefix_out, rows,
                                                   n_rows, mu, sigma, on_batch, terms)
            ready = None
            if self.device.type == "cuda":
                sums, ready = _copy_out(sums, self.device)
        return Launched(plan, unit, rows, inputs, prefix_out, sums, ready)

    def collect(self, job: "Launched", mu: dict[str, torch.Tensor],
                sigma: dict[str, torch.Tensor]) -> Partial:
        """Partial sums (``state.Partial``) of a launched unit's G classes in F folds, per layer:
        on CUDA it waits for this unit's copies alone, not for the units queued after it."""
        plan = job.plan
        n_classes, folds = len(plan.unit_classes(job.unit)), plan.settings.folds
        if job.ready is not None:
            job.ready.synchronize()
        if not all(bool(torch.isfinite(job.sums[l][1]).all() & torch.isfinite(job.sums[l][2])
                        .all()) for l in plan.layers if plan.estimators[l] != "exact"):
            with torch.inference_mode():
                raise_non_finite(self, plan, job.inputs, job.prefix_out, job.rows, mu, sigma)
        return {layer: tuple(t.view(n_classes, folds, *t.shape[1:]) for t in parts)
                for layer, parts in job.sums.items()}

    def _responses(self, layer: str, acts: torch.Tensor, prefix_out, rows: Rows, mu: dict,
                   sigma: dict):
        """Yield (rows in the batch, responses, masks or None) batch by batch for one layer:
        the responses as ``UnitSums.add`` takes them; ``acts`` is the layer's unit input
        (``_unit_input``) of the rows' views."""
        st = self.settings
        k = acts.shape[1]
        zeros = torch.zeros(k, device=self.device)
        kw = dict(seed=st.seed, p_keep=st.p_keep, fill=st.fill, mu=mu.get(layer, zeros),
                  sigma=sigma.get(layer, zeros), validate=False,
                  design=st.masks, folds=st.folds)
        affine = self.affine.get(layer)
        if affine is not None:
            elements = self.elements[layer]
            for view, cls, sample, _ in rows.batches(AFFINE_BATCH):
                m, masks = perturb_means(acts, view, cls, sample, elements=elements, **kw)
                yield len(view), (affine.class_logits(m, cls) if st.response == "logit" else
                                  response_matrix(affine.logits(m), st.response)), masks
            return
        head = self.heads.get(layer)
        if head is not None:
            masks = rows.batch_masks(st, k)
            logits = head.unit_logits(acts, rows.view_runs(st.batch_size), masks,
                                      head.job_fill(st.fill, mu.get(layer)), HEAD_PRODUCT_BYTES)
            for m, out in zip(masks, logits):
                yield len(m), response_matrix(out, st.response), m
            return
        tail = self.tails[layer]
        chain = self.chains.get(layer)
        if chain is not None:   # the chain's maps, and its fill: the same value at every position
            kw.update(fill=chain.fill_kind, mu=chain.fill)
        acts = tail_input(acts)
        for view, cls, sample, _ in rows.batches(st.batch_size):
            pert, masks = perturb(acts, view, cls, sample,
                                  out=tail.buffer((len(view), *acts.shape[1:])), **kw)
            yield len(view), response_matrix(tail(pert, prefix_out, view), st.response), masks

    def _layer_sums(self, layer: str, acts: torch.Tensor, prefix_out, rows: Rows,
                    n_rows: int, mu: dict, sigma: dict,
                    on_batch: Callable[[int], None] | None, terms: dict[str, torch.Tensor]):
        """(sum z*y, sum y, sum y^2) per sum row of one layer, then with the control variate
        its sums (``slopes.ControlBatches``); the views' baselines and slopes are ``terms``'s
        (``view_terms.ViewTerms.of``)."""
        st = self.settings
        batch = self._batch(layer)
        sums = UnitSums(n_rows, acts.shape[1], self.device, seed=st.seed, p_keep=st.p_keep,
                        design=st.masks, folds=st.folds, batch=batch,
                        plan=rows.plans.get(batch),
                        batches=[(c, v, r) for v, c, _, r in rows.batches(batch)])
        base, slopes = terms.get(f"base/{layer}"), terms.get(f"slopes/{layer}")
        adders: list = [sums]
        if slopes is not None:
            adders.append(ControlBatches(st, slopes, rows, n_rows, batch))
        for b, (size, responses, masks) in enumerate(
                self._responses(layer, acts, prefix_out, rows, mu, sigma)):
            for adder in adders:
                adder.add(b, responses, base, masks)
            if on_batch is not None:
                on_batch(size)
        return sum((adder.result() for adder in adders), ())

    def _exact_sums(self, layer: str, means: torch.Tensor, rows: Rows, n_rows: int,
                    mu: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact estimator's sums of one layer (an affine tail, the logit): the response
        of a sample's view is linear in its mask, b + sum_k z_k W_ck (a_k - f_k) + const, so the
        sample's regression coefficients are beta = W_c * (a - f) (a: the view's spatial
        means, f: the fill's). Per sum row: (sum of beta, number of samples, sum of |beta|^2);
        no perturbed network runs."""
        weight = self.affine[layer].weight
        d = means.float()
        if self.settings.fill != "zero":   # mean and noise fills both have mean mu
            d = d - mu[layer][None, :]
        beta = (d.index_select(0, rows.view) * weight.index_select(0, rows.cls)).double()
        if self.device.type == "cuda":
            # index_add_ adds with atomics on CUDA, in no fixed order: a product with the rows'
            # one-hot matrix (a float64 GEMM) gives the same sums the same way every run.
            onehot = torch.zeros(n_rows, len(beta), dtype=torch.float64, device=self.device)
            onehot[rows.sum_row, torch.arange(len(beta), device=self.device)] = 1.0
            return onehot @ beta, onehot.sum(1), onehot @ (beta * beta).sum(1)
        szy = torch.zeros(n_rows, beta.shape[1], dtype=torch.float64, device=self.device)
        sy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        syy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        szy.index_add_(0, rows.sum_row, beta)
        sy.index_add_(0, rows.sum_row, torch.ones_like(beta[:, 0]))
        syy.index_add_(0, rows.sum_row, (beta * beta).sum(1))
        return szy, sy, syy

    def close(self) -> None:
        """Stop the decoding threads."""
        self.views.close()


def _copy_out(sums: dict, device: torch.device):
    """The sums copied into pinned host memory behind an event on the current stream: the
    event passes when this unit's work is done, whatever is queued after it."""
    host = {}
    for layer, parts in sums.items():
        host[layer] = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                            .copy_(t, non_blocking=True) for t in parts)
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(device))
    return host, ready
