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

On CUDA nothing between a unit's first and last batch reads the device: indices are built on the
host once per unit, the kernels skip their range checks, a non-finite response sets a device
flag that is read with the sums at the end of the unit.

Owns the views, the prefix and tail passes and the fill statistics pass; the model's sizes and
tails come resolved (``inputs``); it reads the plan and never writes the job's state or files.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .. import rng
from ..util.cpus import usable_cpus
from ..data.sources import ImageFolderSource, make_view
from ..ops.perturb import perturb
from ..ops.perturb_means import perturb_means
from .inputs import JobInputs
from .plan import DistillPlan, Unit
from .settings import DistillSettings
from ..ops.response_sums import response_sums
from .state import Partial
from .tails import AffineTail, TailRunner, no_sync_checks, response_of

# Called after every prefix pass with the (class, view) keys of the batch, the views themselves
# (preprocessed, on the device) and the prefix outputs; a view may be seen more than once (the
# fill statistics pass, then its unit), so an observer that counts views dedupes by key.
PrefixObserver = Callable[[list[tuple[int, int]], torch.Tensor, dict[str, torch.Tensor]], None]

# Rows per batch on the affine path: only (rows x channels) values per batch, so large batches.
AFFINE_BATCH = 4096
# The fill statistics pass keeps what the units need of its views (spatial means for affine
# layers, activations otherwise) when that fits here, so no view runs the prefix twice.
VIEW_CACHE_BYTES = 512 * 2**20


@dataclass
class Launched:
    """A unit whose work is queued: its device sums and non-finite flag, and what it took to
    find a non-finite response again."""
    plan: DistillPlan
    unit: Unit
    rows: "Rows"
    inputs: dict[str, torch.Tensor]
    prefix_out: dict[str, torch.Tensor] | None
    sums: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    bad: torch.Tensor


@dataclass
class Rows:
    """A unit's rows, sample-major (each batch holds every class of the group), on the device:
    the view each perturbs, its class, its (class slot, fold) sum row, its sample index."""
    view: torch.Tensor
    cls: torch.Tensor
    sum_row: torch.Tensor
    sample: torch.Tensor
    keys: list[tuple[int, int]]        # (class, view) of each distinct view, in load order
    key_cls: torch.Tensor              # the class of each of ``keys``, on the device

    def __len__(self) -> int:
        return len(self.view)


class UnitRunner:
    """Runs units of one job on one device."""

    def __init__(self, inputs: JobInputs, settings: DistillSettings, device: torch.device) -> None:
        self.split = inputs.split
        self.source = inputs.source
        self.settings = settings
        self.device = device
        self._pool: ThreadPoolExecutor | None = None
        self.observers: list[PrefixObserver] = []   # e.g. the channel atlas
        self.affine: dict[str, AffineTail] = inputs.affine
        self.tails: dict[str, TailRunner] = inputs.tails
        self.elements: dict[str, int] = inputs.elements
        # (class, view) -> what the units need of it per layer, from the fill statistics pass
        self.cache: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    # -- views and the prefix ---------------------------------------------------------------
    def _view(self, c: int, v: int) -> torch.Tensor:
        n_images = self.source.count(c)
        image = self.source.load(c, v % n_images)
        return make_view(image, c, v, n_images, self.settings.seed)

    def _decoder(self) -> ThreadPoolExecutor:
        # PIL releases the GIL while decoding; as many threads as CPUs this process may use.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=usable_cpus(),
                                            thread_name_prefix="chip_fast-decode")
        return self._pool

    def submit_views(self, pairs: list[tuple[int, int]]) -> Future | list[Future]:
        """Start decoding the (class, view) pairs on the decoding threads; ``load_views``
        waits for them."""
        if not pairs:
            return []
        if len(pairs) > 1 and isinstance(self.source, ImageFolderSource):
            pool = self._decoder()
            return [pool.submit(self._view, c, v) for c, v in pairs]
        done: Future = Future()
        done.set_result(torch.stack([self._view(c, v) for c, v in pairs]))
        return done

    def load_views(self, pairs: list[tuple[int, int]], pending=None) -> torch.Tensor:
        """The (class, view) pairs as one batch, in a fixed order (``pending``: what
        ``submit_views`` returned for them)."""
        pending = self.submit_views(pairs) if pending is None else pending
        if isinstance(pending, Future):
            return pending.result()
        views = torch.stack([f.result() for f in pending])
        return views.pin_memory() if self.device.type == "cuda" else views

    def prefix(self, views: torch.Tensor, keys: list[tuple[int, int]] | None = None
               ) -> dict[str, torch.Tensor]:
        """The prefix outputs of ``views``; with their (class, view) ``keys``, the observers see
        them too."""
        outs: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(views), self.settings.batch_size):
            x = views[i:i + self.settings.batch_size].to(self.device, non_blocking=True)
            if x.dim() == 4:   # channels-last convolutions are faster on a CPU (docs/design.md)
                x = x.contiguous(memory_format=torch.channels_last)
            outs.append(self.split.run_prefix(x))
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        if keys is not None:
            for observe in self.observers:
                observe(keys, views, out)
        return out

    def caches_views(self, plan: DistillPlan) -> bool:
        """Whether the fill statistics pass keeps its views for the units: when no tail reads
        other prefix values and what the units need of the pass's views fits VIEW_CACHE_BYTES.
        Decided from the plan alone, so every process decides alike."""
        if any(self.split.tails[l].extras for l in plan.layers):
            return False
        per_view = sum(4 * plan.channels[l] * (1 if l in self.affine else self.elements[l])
                       for l in plan.layers)
        return len(plan.fill_views()) * per_view <= VIEW_CACHE_BYTES

    def _unit_input(self, layer: str, acts: torch.Tensor) -> torch.Tensor:
        """What the units use of a layer's activations: spatial means on the affine path."""
        if layer in self.affine:
            return acts.float().mean(tuple(range(2, acts.dim())))
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
    def rows(self, plan: DistillPlan, unit: Unit) -> Rows:
        """The unit's rows, sample-major: for each sample index, one row per class of the
        group, so every tail batch mixes the group's classes."""
        classes = plan.groups[unit.group]
        samples = torch.tensor(list(plan.unit_sample_range(unit)), dtype=torch.int64)
        keys: list[tuple[int, int]] = []
        index: dict[tuple[int, int], int] = {}
        view_cols = []
        for c in classes:
            cols = []
            for v in plan.views.view_of(c, samples).tolist():
                if (c, v) not in index:
                    index[(c, v)] = len(keys)
                    keys.append((c, v))
                cols.append(index[(c, v)])
            view_cols.append(torch.tensor(cols))
        g, n = len(classes), len(samples)
        folds = plan.settings.folds
        view = torch.stack(view_cols, 1).flatten()                       # (n * g,)
        cls = torch.tensor(classes).repeat(n)
        slot = torch.arange(g).repeat(n)
        sample = samples.repeat_interleave(g)
        sum_row = slot * folds + rng.fold_of(sample, folds, plan.antithetic)
        pin = self.device.type == "cuda"
        on = (lambda t: t.pin_memory().to(self.device, non_blocking=True)) if pin else (lambda t: t)
        return Rows(on(view), on(cls), on(sum_row), on(sample), keys,
                    on(torch.tensor([c for c, _ in keys])))

    def prepare(self, plan: DistillPlan, unit: Unit) -> tuple[Rows, object]:
        """A unit's rows and the decoding of its views not in the cache, started now (call it
        for the next unit before running this one, so decoding overlaps the work)."""
        rows = self.rows(plan, unit)
        return rows, self.submit_views([k for k in rows.keys if k not in self.cache])

    def _inputs(self, plan: DistillPlan, rows: Rows, pending):
        """(the units' input of every layer for the rows' views, in their order; the prefix
        outputs of the views computed now, or None when every view came from the cache)."""
        todo = [k for k in rows.keys if k not in self.cache]
        if not todo:
            return {l: torch.stack([self.cache[k][l] for k in rows.keys])
                    for l in plan.layers}, None
        prefix_out = self.prefix(self.load_views(todo, pending), todo)
        fresh = {l: self._unit_input(l, self.split.activation(prefix_out, l))
                 for l in plan.layers}
        if len(todo) == len(rows.keys):    # the usual case at scale: no copy
            return fresh, prefix_out
        at = {k: i for i, k in enumerate(todo)}
        return {l: torch.stack([self.cache[k][l] if k in self.cache else fresh[l][at[k]]
                                for k in rows.keys]) for l in plan.layers}, prefix_out

    def launch(self, plan: DistillPlan, unit: Unit, mu: dict[str, torch.Tensor],
               sigma: dict[str, torch.Tensor], prepared: tuple[Rows, object] | None = None,
               on_batch: Callable[[int], None] | None = None) -> "Launched":
        """Queue a unit's work (on CUDA it runs asynchronously; ``collect`` waits for it).
        ``prepared``: what ``prepare`` returned for this unit; ``on_batch(samples)`` follows
        each batch (progress)."""
        rows, pending = prepared if prepared is not None else self.prepare(plan, unit)
        n_rows = len(plan.groups[unit.group]) * plan.settings.folds
        with torch.inference_mode():
            inputs, prefix_out = self._inputs(plan, rows, pending)
            bad = torch.zeros((), dtype=torch.bool, device=self.device)
            sums = {}
            with no_sync_checks(self.device):
                for layer in plan.layers:
                    if plan.estimators[layer] == "exact":
                        sums[layer] = self._exact_sums(layer, inputs[layer], rows, n_rows, mu)
                        if on_batch is not None:
                            on_batch(len(rows))
                        continue
                    sums[layer], bad = self._layer_sums(layer, inputs[layer], prefix_out, rows,
                                                        n_rows, mu, sigma, bad, on_batch)
        return Launched(plan, unit, rows, inputs, prefix_out, sums, bad)

    def collect(self, job: "Launched", mu: dict[str, torch.Tensor],
                sigma: dict[str, torch.Tensor]) -> Partial:
        """Partial sums (sum z*y (G, F, K), sum y (G, F), sum y^2 (G, F)) of a launched unit's
        G classes in F folds, per layer: the one read of the device per unit."""
        plan = job.plan
        n_classes, folds = len(plan.groups[job.unit.group]), plan.settings.folds
        with torch.inference_mode():
            if bool(job.bad):
                self._raise_non_finite(plan, job.inputs, job.prefix_out, job.rows, mu, sigma)
            return {layer: (szy.view(n_classes, folds, -1).cpu(), sy.view(n_classes, folds).cpu(),
                            syy.view(n_classes, folds).cpu())
                    for layer, (szy, sy, syy) in job.sums.items()}

    def _responses(self, layer: str, acts: torch.Tensor, prefix_out, rows: Rows, mu: dict,
                   sigma: dict):
        """Yield (slice of rows, responses y, masks or None) batch by batch for one layer;
        ``acts`` is the layer's unit input (``_unit_input``) of the rows' views."""
        st = self.settings
        k = acts.shape[1]
        zeros = torch.zeros(k, device=self.device)
        kw = dict(seed=st.seed, p_keep=st.p_keep, fill=st.fill, mu=mu.get(layer, zeros),
                  sigma=sigma.get(layer, zeros), validate=False,
                  antithetic=st.masks == "antithetic")
        affine = self.affine.get(layer)
        if affine is not None:
            elements = self.elements[layer]
            for i in range(0, len(rows), AFFINE_BATCH):
                sl = slice(i, i + AFFINE_BATCH)
                cls = rows.cls[sl]
                m, masks = perturb_means(acts, rows.view[sl], cls, rows.sample[sl],
                                         elements=elements, **kw)
                yield sl, (affine.class_logits(m, cls) if st.response == "logit"
                           else response_of(affine.logits(m), cls, st.response)), masks
            return
        tail = self.tails[layer]
        acts = self._tail_input(acts)
        for i in range(0, len(rows), st.batch_size):
            sl = slice(i, i + st.batch_size)
            view, cls = rows.view[sl], rows.cls[sl]
            pert, masks = perturb(acts, view, cls, rows.sample[sl],
                                  out=tail.buffer((len(view), *acts.shape[1:])), **kw)
            yield sl, response_of(tail(pert, prefix_out, view), cls, st.response), masks

    def _layer_sums(self, layer: str, acts: torch.Tensor, prefix_out, rows: Rows,
                    n_rows: int, mu: dict, sigma: dict, bad: torch.Tensor,
                    on_batch: Callable[[int], None] | None):
        """(sum z*y, sum y, sum y^2) per sum row of one layer, and the non-finite flag."""
        st = self.settings
        k = acts.shape[1]
        szy = torch.zeros(n_rows, k, dtype=torch.float64, device=self.device)
        sy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        syy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        base = (self._baseline(layer, acts, prefix_out, rows) if st.baseline == "view"
                else None)
        for sl, y, masks in self._responses(layer, acts, prefix_out, rows, mu, sigma):
            if base is not None:
                y = y - st.p_keep * base.index_select(0, rows.view[sl])
            bad = bad | ~torch.isfinite(y).all()
            a, b, c = response_sums(y, rows.sum_row[sl], n_rows, seed=st.seed,
                                    samples=rows.sample[sl], p_keep=st.p_keep, channels=k,
                                    masks=masks, validate=False,
                                    antithetic=st.masks == "antithetic")
            szy += a
            sy += b
            syy += c
            if on_batch is not None:
                on_batch(len(y))
        return (szy, sy, syy), bad

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
        szy = torch.zeros(n_rows, beta.shape[1], dtype=torch.float64, device=self.device)
        sy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        syy = torch.zeros(n_rows, dtype=torch.float64, device=self.device)
        szy.index_add_(0, rows.sum_row, beta)
        sy.index_add_(0, rows.sum_row, torch.ones_like(beta[:, 0]))
        syy.index_add_(0, rows.sum_row, (beta * beta).sum(1))
        return szy, sy, syy

    def _baseline(self, layer: str, acts: torch.Tensor, prefix_out, rows: Rows) -> torch.Tensor:
        """(V,) the unperturbed response of each of the rows' views for its own class
        (``baseline="view"``): the same tail on the layer's own activation."""
        cls, kind = rows.key_cls, self.settings.response
        affine = self.affine.get(layer)
        if affine is not None:
            return (affine.class_logits(acts.float(), cls) if kind == "logit"
                    else response_of(affine.logits(acts.float()), cls, kind))
        tail, out = self.tails[layer], []
        for i in range(0, len(cls), self.settings.batch_size):
            idx = torch.arange(i, min(i + self.settings.batch_size, len(cls)), device=self.device)
            x = self._tail_input(acts[i:i + len(idx)])
            out.append(response_of(tail(x, prefix_out, idx), cls[i:i + len(idx)], kind))
        return torch.cat(out)

    def _tail_input(self, acts: torch.Tensor) -> torch.Tensor:
        """The unit's activations once in the layout the tail runs fastest in (channels-last
        for convolutions, on CPUs and tensor cores alike), so each perturbed batch copies rows
        of it without reordering."""
        if acts.dim() == 4:
            acts = acts.contiguous(memory_format=torch.channels_last)
        return acts

    def _raise_non_finite(self, plan: DistillPlan, inputs, prefix_out, rows: Rows, mu,
                          sigma) -> None:
        """Find the first non-finite response again (only when the flag was set) and stop with
        the layer, class and sample that produced it."""
        response = self.settings.response
        for layer in plan.layers:
            for sl, y, _ in self._responses(layer, inputs[layer], prefix_out, rows, mu, sigma):
                bad = ~torch.isfinite(y)
                if bool(bad.any()):
                    i = sl.start + int(bad.nonzero()[0])
                    raise FloatingPointError(
                        f"non-finite {response} at layer {layer}, class {int(rows.cls[i])}, "
                        f"sample {int(rows.sample[i])}: the perturbed network diverges (try "
                        "fill='mean' or check the model)")

    def close(self) -> None:
        """Stop the decoding threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
