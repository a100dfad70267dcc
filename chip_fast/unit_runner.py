"""The hot loop of distillation: one unit (class group x sample block) to partial sums.

A unit loads the few image views its samples use, runs the prefix (input -> layer) on them once,
then, per layer, perturbs batches of rows (perturbed networks) of all the group's classes, runs
the tail on them, takes each row's class response and adds z * y and y per class in float64.
The partial sums go back to the job, which adds them in unit order (``chip_fast.state``).

Owns the views, the prefix and tail passes, the fill statistics pass and the probe of the
model's sizes; it reads the plan and never writes the job's state or files.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from .data import ImageFolderSource, make_view
from .perturb import perturb
from .plan import DistillPlan, DistillSettings, Unit
from .response_sums import response_sums
from .split import SplitModel
from .state import Partial

# Called after every prefix pass with the (class, view) keys of the batch, the views themselves
# (preprocessed, on the device) and the prefix outputs; a view may be seen more than once (the
# fill statistics pass, then its unit), so an observer that counts views dedupes by key.
PrefixObserver = Callable[[list[tuple[int, int]], torch.Tensor, dict[str, torch.Tensor]], None]


def response_of(logits: torch.Tensor, classes: torch.Tensor, kind: str) -> torch.Tensor:
    """The class's response per row, float32: its logit, softmax probability or log-softmax."""
    logits = logits.float()
    if kind == "softmax":
        logits = torch.softmax(logits, dim=1)
    elif kind == "log_softmax":
        logits = torch.log_softmax(logits, dim=1)
    return logits.gather(1, classes[:, None])[:, 0]


class UnitRunner:
    """Runs units of one job on one device."""

    def __init__(self, model: nn.Module, split: SplitModel, source, settings: DistillSettings,
                 device: torch.device) -> None:
        self.model = model
        self.split = split
        self.source = source
        self.settings = settings
        self.device = device
        self._pool: ThreadPoolExecutor | None = None
        self.observers: list[PrefixObserver] = []   # e.g. the channel atlas

    # -- views and the prefix ---------------------------------------------------------------
    def _view(self, c: int, v: int) -> torch.Tensor:
        n_images = self.source.count(c)
        image = self.source.load(c, v % n_images)
        return make_view(image, c, v, n_images, self.settings.seed)

    def load_views(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """The (class, view) pairs as one batch. Photos decode on a thread pool: PIL releases
        the GIL while decoding, so a unit's views load in parallel, in a fixed order."""
        if len(pairs) > 1 and isinstance(self.source, ImageFolderSource):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                thread_name_prefix="chip_fast-decode")
            return torch.stack(list(self._pool.map(lambda cv: self._view(*cv), pairs)))
        return torch.stack([self._view(c, v) for c, v in pairs])

    def prefix(self, views: torch.Tensor, keys: list[tuple[int, int]] | None = None
               ) -> dict[str, torch.Tensor]:
        """The prefix outputs of ``views``; with their (class, view) ``keys``, the observers see
        them too."""
        outs: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(views), self.settings.batch_size):
            outs.append(self.split.run_prefix(views[i:i + self.settings.batch_size].to(self.device)))
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        if keys is not None:
            for observe in self.observers:
                observe(keys, views, out)
        return out

    def probe(self, c: int) -> tuple[int, dict[str, int]]:
        """Model output size and channels per layer, from one view of class ``c``; NaN logits
        stop here."""
        x = self._view(c, 0)[None].to(self.device)
        with torch.inference_mode():
            out = self.prefix(x)
            channels = {l: self.split.activation(out, l).shape[1] for l in self.split.layers}
            logits = self.model(x)
        if logits.dim() != 2:
            raise ValueError(f"the model returns shape {tuple(logits.shape)}, not (batch, classes)")
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model returns NaN or Inf logits on a distillation image "
                                     f"of class {c}: check its weights and the preprocessing")
        return logits.shape[1], channels

    def fill_statistics(self, plan: DistillPlan) -> tuple[dict[str, torch.Tensor],
                                                          dict[str, torch.Tensor]]:
        """Per-channel mean and std of every layer over up to ``fill_stats_views`` views, taken
        round-robin over the classes so every class counts."""
        order = []
        depth = 0
        while len(order) < self.settings.fill_stats_views:
            added = [(c, depth) for c in plan.classes if depth < plan.views.views[c]]
            if not added:
                break
            order += added
            depth += 1
        order = order[:self.settings.fill_stats_views]
        s1 = {l: 0.0 for l in plan.layers}
        s2 = {l: 0.0 for l in plan.layers}
        count = 0
        with torch.inference_mode():
            for i in range(0, len(order), self.settings.batch_size):
                keys = order[i:i + self.settings.batch_size]
                out = self.prefix(self.load_views(keys), keys)
                for l in plan.layers:
                    a = self.split.activation(out, l).double().transpose(0, 1).flatten(1)
                    s1[l] = s1[l] + a.sum(1)
                    s2[l] = s2[l] + (a * a).sum(1)
                count += a.shape[1]
        mu, sigma = {}, {}
        for l in plan.layers:
            mean = s1[l] / count
            var = (s2[l] / count - mean * mean).clamp(min=0)
            mu[l] = mean.float().to(self.device)
            sigma[l] = var.sqrt().float().to(self.device)
        return mu, sigma

    # -- one unit ---------------------------------------------------------------------------
    def _rows(self, plan: DistillPlan, unit: Unit):
        """The unit's rows (one per perturbed network of one class) and the views they use."""
        classes = plan.groups[unit.group]
        samples = torch.tensor(list(plan.unit_sample_range(unit)), dtype=torch.int64)
        keys, view_list = {}, []
        rows_view, rows_class, rows_slot, rows_sample = [], [], [], []
        for j, c in enumerate(classes):
            v_of = plan.views.view_of(c, samples)
            for v in torch.unique(v_of).tolist():
                keys[(c, v)] = len(view_list)
                view_list.append((c, v))
            rows_view.append(torch.tensor([keys[(c, v)] for v in v_of.tolist()]))
            rows_class.append(torch.full_like(samples, c))
            rows_slot.append(torch.full_like(samples, j))
            rows_sample.append(samples)
        rows = tuple(torch.cat(t).to(self.device)
                     for t in (rows_view, rows_class, rows_slot, rows_sample))
        return view_list, rows

    def run(self, plan: DistillPlan, unit: Unit, mu: dict[str, torch.Tensor],
            sigma: dict[str, torch.Tensor]) -> Partial:
        """Partial sums (sum z*y (G, F, K), sum y (G, F), sum y^2 (G, F)) of one unit's G
        classes in F folds, per layer."""
        st = self.settings
        n_classes, folds = len(plan.groups[unit.group]), st.folds
        view_list, (row_view, row_class, row_slot, row_sample) = self._rows(plan, unit)
        row_slot = row_slot * folds + row_sample % folds   # (class slot, fold) of each row
        views = self.load_views(view_list)
        result = {}
        with torch.inference_mode():
            prefix_out = self.prefix(views, view_list)
            for layer in plan.layers:
                acts = self.split.activation(prefix_out, layer)
                k = acts.shape[1]
                zeros = torch.zeros(k, device=self.device)
                szy = torch.zeros(n_classes * folds, k, dtype=torch.float64, device=self.device)
                sy = torch.zeros(n_classes * folds, dtype=torch.float64, device=self.device)
                syy = torch.zeros(n_classes * folds, dtype=torch.float64, device=self.device)
                for i in range(0, len(row_view), st.batch_size):
                    sl = slice(i, i + st.batch_size)
                    pert, masks = perturb(acts, row_view[sl], row_class[sl], row_sample[sl],
                                          seed=st.seed, p_keep=st.p_keep, fill=st.fill,
                                          mu=mu.get(layer, zeros), sigma=sigma.get(layer, zeros))
                    logits = self.tail(layer, pert, prefix_out, row_view[sl])
                    y = response_of(logits, row_class[sl], st.response)
                    if not torch.isfinite(y).all():
                        bad = int((~torch.isfinite(y)).nonzero()[0])
                        raise FloatingPointError(
                            f"non-finite {st.response} at layer {layer}, class "
                            f"{int(row_class[sl][bad])}, sample {int(row_sample[sl][bad])}: the "
                            "perturbed network diverges (try fill='mean' or check the model)")
                    a, b = response_sums(y, row_slot[sl], n_classes * folds, seed=st.seed,
                                         samples=row_sample[sl], p_keep=st.p_keep, channels=k,
                                         masks=masks)
                    szy += a
                    sy += b
                    syy.index_add_(0, row_slot[sl], y.double() ** 2)
                result[layer] = (szy.view(n_classes, folds, k).cpu(),
                                 sy.view(n_classes, folds).cpu(), syy.view(n_classes, folds).cpu())
        return result

    def tail(self, layer: str, pert: torch.Tensor, prefix_out: dict[str, torch.Tensor],
             rows: torch.Tensor) -> torch.Tensor:
        if pert.dim() == 4:  # channels-last convolutions are faster on CPUs and tensor cores alike
            pert = pert.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.settings.tail_dtype == "bfloat16"):
            return self.split.run_tail(layer, pert, prefix_out, rows).float()

    def close(self) -> None:
        """Stop the decoding threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
