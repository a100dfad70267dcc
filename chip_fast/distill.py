"""Stage 1 orchestration: perturbed responses of all classes -> statistics -> sparse fit.

The work is cut into units: a group of classes x a block of consecutive samples. A unit runs the
prefix (input -> layer) once on the few image views its samples use, then the tail on large
batches of perturbed activations, and returns float64 partial sums. Partials are added in unit
order, so a run is bit-for-bit reproducible, and a job can stop after any unit and resume.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn

from . import __version__
from .data import ImageFolderSource, ViewPlan, as_source, make_view, views_per_image
from .importance import Importance, _atomic_write, model_fingerprint
from .layers import SplitModel, check_layers, default_layers
from .perturb import FILLS, perturb
from .solver import solve_lasso
from .stats import covariances, mask_moments, response_sums

logger = logging.getLogger("chip_fast")

RESPONSES = ("logit", "softmax", "log_softmax")


@dataclass(frozen=True)
class DistillSettings:
    """Every choice that changes the result; all are written into the importance file."""
    samples_per_class: int = 2048
    seed: int = 0
    p_keep: float = 0.5
    fill: str = "noise"
    response: str = "logit"
    alpha: float = 0.1
    nonneg: bool = False
    augment: bool | int = False
    # Perturbed samples per tail forward; None: 64 on a CPU, where a batch that stays in cache
    # makes the tails 1.7x faster than 256 (bench/results/batch_size_cpu), else 256.
    batch_size: int | None = None
    classes_per_unit: int = 8
    samples_per_unit: int = 512
    fill_stats_views: int = 1024   # views that estimate each channel's mean and std
    tol: float = 1e-6
    max_iter: int = 5000
    # Tail forwards in bfloat16 autocast (channels-last input) where the device has fast bf16:
    # "auto" means bfloat16 on CUDA and float32 elsewhere. Responses are always float32.
    tail_dtype: str = "auto"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)
        need(isinstance(self.samples_per_class, int) and self.samples_per_class >= 2,
             f"samples_per_class must be an int >= 2, got {self.samples_per_class!r}")
        need(0 < self.p_keep < 1, f"p_keep must be in (0, 1), got {self.p_keep}")
        need(self.fill in FILLS, f"fill must be one of {FILLS}, got {self.fill!r}")
        need(self.response in RESPONSES, f"response must be one of {RESPONSES}, got {self.response!r}")
        need(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        need((self.batch_size is None or self.batch_size >= 1) and self.classes_per_unit >= 1
             and self.samples_per_unit >= 1,
             "batch_size, classes_per_unit and samples_per_unit must be >= 1")
        views_per_image(self.augment)
        need(self.tail_dtype in ("auto", "float32", "bfloat16"),
             f"tail_dtype must be auto, float32 or bfloat16, got {self.tail_dtype!r}")

    def resolved(self, device: torch.device) -> "DistillSettings":
        """These settings with "auto"/None made concrete for ``device`` (the file records them)."""
        cuda = device.type == "cuda"
        tail_dtype = self.tail_dtype if self.tail_dtype != "auto" else (
            "bfloat16" if cuda else "float32")
        batch_size = self.batch_size if self.batch_size is not None else (256 if cuda else 64)
        return dataclasses.replace(self, tail_dtype=tail_dtype, batch_size=batch_size)


def response_of(logits: torch.Tensor, classes: torch.Tensor, kind: str) -> torch.Tensor:
    """The class's response per row, float32: its logit, softmax probability or log-softmax."""
    logits = logits.float()
    if kind == "softmax":
        logits = torch.softmax(logits, dim=1)
    elif kind == "log_softmax":
        logits = torch.log_softmax(logits, dim=1)
    return logits.gather(1, classes[:, None])[:, 0]


@dataclass
class Unit:
    group: int
    block: int


class DistillJob:
    """One distillation: the plan of units, running them, and turning the sums into weights."""

    def __init__(self, model: nn.Module, data, layers: Sequence[str] | None,
                 settings: DistillSettings, classes: Iterable[int] | None = None) -> None:
        self.model = model
        self.source = as_source(data)
        self.device = next(model.parameters()).device
        self.settings = settings = settings.resolved(self.device)
        if layers is None:
            layers = default_layers(model)
            logger.warning("chip_fast: layers=None, distilling the default layers %s", layers)
        self.layers = check_layers(model, layers)
        have = self.source.classes
        if classes is None:
            self.classes = have
        else:
            self.classes = sorted({int(c) for c in classes})
            missing = [c for c in self.classes if c not in have]
            if missing:
                raise ValueError(f"classes {missing[:20]} have no images in the data "
                                 f"({len(have)} classes have images)")
        if not self.classes:
            raise ValueError("no class to distill")
        self.split = SplitModel(model, self.layers)
        self._pool: ThreadPoolExecutor | None = None
        n = settings.samples_per_class
        self.plan = ViewPlan(n, {c: self.source.count(c) * views_per_image(settings.augment)
                                 for c in self.classes})
        self.groups = [self.classes[i:i + settings.classes_per_unit]
                       for i in range(0, len(self.classes), settings.classes_per_unit)]
        self.blocks = math.ceil(n / settings.samples_per_unit)
        self.units = [Unit(g, b) for g in range(len(self.groups)) for b in range(self.blocks)]
        self.slot = {c: i for i, c in enumerate(self.classes)}
        self.num_classes, self.channels = self._probe()
        big = [c for c in self.classes if c >= self.num_classes]
        if big:
            raise ValueError(f"classes {big[:10]} are outside the model's {self.num_classes} outputs")
        # A sparse support is recoverable from fewer samples than channels (compressed sensing),
        # but not from far fewer: then FISTA crawls and the support is arbitrary.
        thin = {l: k for l, k in self.channels.items() if 4 * settings.samples_per_class < k}
        if thin:
            warnings.warn(f"samples_per_class={settings.samples_per_class} is under a quarter of "
                          f"the channels of {thin}: the sparse fit is underdetermined there (slow "
                          "to converge, unstable support); use more samples", stacklevel=3)
        self.mu: dict[str, torch.Tensor] = {}
        self.sigma: dict[str, torch.Tensor] = {}
        c_d = len(self.classes)
        self.sum_zy = {l: torch.zeros(c_d, self.channels[l], dtype=torch.float64) for l in self.layers}
        self.sum_y = {l: torch.zeros(c_d, dtype=torch.float64) for l in self.layers}
        # Blocks completed per class group: a group's blocks run in order, so its sums are the
        # same whichever process runs the group and wherever a job was stopped.
        self.done_blocks = [0] * len(self.groups)

    # -- views and the prefix ---------------------------------------------------------------
    def _view(self, c: int, v: int) -> torch.Tensor:
        n_images = self.source.count(c)
        image = self.source.load(c, v % n_images)
        return make_view(image, c, v, n_images, self.settings.seed)

    def _load_views(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """The (class, view) pairs as one batch. Photos decode on a thread pool: PIL releases
        the GIL while decoding, so a unit's views load in parallel, in a fixed order."""
        if len(pairs) > 1 and isinstance(self.source, ImageFolderSource):
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                thread_name_prefix="chip_fast-decode")
            return torch.stack(list(self._pool.map(lambda cv: self._view(*cv), pairs)))
        return torch.stack([self._view(c, v) for c, v in pairs])

    def _prefix(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        outs: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(views), self.settings.batch_size):
            outs.append(self.split.run_prefix(views[i:i + self.settings.batch_size].to(self.device)))
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def _probe(self) -> tuple[int, dict[str, int]]:
        """Model output size and channels per layer, from one view; NaN logits stop here."""
        c = self.classes[0]
        x = self._view(c, 0)[None].to(self.device)
        with torch.inference_mode():
            out = self._prefix(x)
            channels = {l: self.split.activation(out, l).shape[1] for l in self.layers}
            logits = self.model(x)
        if logits.dim() != 2:
            raise ValueError(f"the model returns shape {tuple(logits.shape)}, not (batch, classes)")
        if not torch.isfinite(logits).all():
            raise FloatingPointError("the model returns NaN or Inf logits on a distillation image "
                                     f"of class {c}: check its weights and the preprocessing")
        return logits.shape[1], channels

    def fill_statistics(self) -> None:
        """Per-channel mean and std of every layer over up to ``fill_stats_views`` views, taken
        round-robin over the classes so every class counts."""
        order = []
        depth = 0
        while len(order) < self.settings.fill_stats_views:
            added = [(c, depth) for c in self.classes if depth < self.plan.views[c]]
            if not added:
                break
            order += added
            depth += 1
        order = order[:self.settings.fill_stats_views]
        s1 = {l: 0.0 for l in self.layers}
        s2 = {l: 0.0 for l in self.layers}
        count = 0
        for i in range(0, len(order), self.settings.batch_size):
            chunk = order[i:i + self.settings.batch_size]
            views = self._load_views(chunk)
            with torch.inference_mode():
                out = self._prefix(views)
            for l in self.layers:
                a = self.split.activation(out, l).double().transpose(0, 1).flatten(1)
                s1[l] = s1[l] + a.sum(1)
                s2[l] = s2[l] + (a * a).sum(1)
            count += a.shape[1]
        for l in self.layers:
            mean = s1[l] / count
            var = (s2[l] / count - mean * mean).clamp(min=0)
            self.mu[l] = mean.float().to(self.device)
            self.sigma[l] = var.sqrt().float().to(self.device)

    # -- one unit ---------------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Partial sums (sum z*y (G, K), sum y (G,)) of one unit's classes, per layer."""
        st = self.settings
        classes = self.groups[unit.group]
        s0 = unit.block * st.samples_per_unit
        samples = torch.arange(s0, min(s0 + st.samples_per_unit, st.samples_per_class))
        keys, rows_view, rows_class, rows_slot, rows_sample = {}, [], [], [], []
        view_list = []
        for j, c in enumerate(classes):
            v_of = self.plan.view_of(c, samples)
            for v in torch.unique(v_of).tolist():
                keys[(c, v)] = len(view_list)
                view_list.append((c, v))
            rows_view.append(torch.tensor([keys[(c, v)] for v in v_of.tolist()]))
            rows_class.append(torch.full_like(samples, c))
            rows_slot.append(torch.full_like(samples, j))
            rows_sample.append(samples)
        dev = self.device
        row_view, row_class, row_slot, row_sample = (torch.cat(t).to(dev) for t in
                                                      (rows_view, rows_class, rows_slot, rows_sample))
        views = self._load_views(view_list)
        result = {}
        with torch.inference_mode():
            prefix_out = self._prefix(views)
            for layer in self.layers:
                acts = self.split.activation(prefix_out, layer)
                k = acts.shape[1]
                szy = torch.zeros(len(classes), k, dtype=torch.float64, device=dev)
                sy = torch.zeros(len(classes), dtype=torch.float64, device=dev)
                for i in range(0, len(row_view), st.batch_size):
                    sl = slice(i, i + st.batch_size)
                    pert, masks = perturb(acts, row_view[sl], row_class[sl], row_sample[sl],
                                          seed=st.seed, p_keep=st.p_keep, fill=st.fill,
                                          mu=self.mu.get(layer, torch.zeros(k, device=dev)),
                                          sigma=self.sigma.get(layer, torch.zeros(k, device=dev)))
                    logits = self._tail(layer, pert, prefix_out, row_view[sl])
                    y = response_of(logits, row_class[sl], st.response)
                    if not torch.isfinite(y).all():
                        bad = int((~torch.isfinite(y)).nonzero()[0])
                        raise FloatingPointError(
                            f"non-finite {st.response} at layer {layer}, class "
                            f"{int(row_class[sl][bad])}, sample {int(row_sample[sl][bad])}: the "
                            "perturbed network diverges (try fill='mean' or check the model)")
                    a, b = response_sums(y, row_slot[sl], len(classes), seed=st.seed,
                                         samples=row_sample[sl], p_keep=st.p_keep, channels=k,
                                         masks=masks)
                    szy += a
                    sy += b
                result[layer] = (szy.cpu(), sy.cpu())
        return result

    def _tail(self, layer: str, pert: torch.Tensor, prefix_out: dict[str, torch.Tensor],
              rows: torch.Tensor) -> torch.Tensor:
        if pert.dim() == 4:  # channels-last convolutions are faster on CPUs and tensor cores alike
            pert = pert.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.settings.tail_dtype == "bfloat16"):
            return self.split.run_tail(layer, pert, prefix_out, rows).float()

    def group_rows(self, g: int) -> torch.Tensor:
        """Rows of class group ``g`` in the per-class sums."""
        return torch.tensor([self.slot[c] for c in self.groups[g]])

    def add(self, unit: Unit, partial: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        slots = self.group_rows(unit.group)
        for layer, (szy, sy) in partial.items():
            self.sum_zy[layer][slots] += szy
            self.sum_y[layer][slots] += sy

    # -- checkpoints ------------------------------------------------------------------------
    def identity(self) -> str:
        """A hash of everything that must match for a checkpoint to be resumed."""
        key = {"settings": dataclasses.asdict(self.settings), "layers": self.layers,
               "classes": self.classes, "model": model_fingerprint(self.model)["sha256"],
               "views": {str(c): v for c, v in self.plan.views.items()}}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def save_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import save_file
        tensors = {f"sum_zy/{l}": self.sum_zy[l] for l in self.layers}
        tensors.update({f"sum_y/{l}": self.sum_y[l] for l in self.layers})
        tensors.update({f"mu/{l}": self.mu[l].cpu() for l in self.mu})
        tensors.update({f"sigma/{l}": self.sigma[l].cpu() for l in self.sigma})
        meta = {"chip_fast_checkpoint": json.dumps({"identity": self.identity(),
                                                    "done_blocks": self.done_blocks})}
        _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))

    def _read_progress(self, path: Path, identity: str) -> list[int]:
        """done_blocks of a checkpoint, after checking that it belongs to this job; a damaged
        file or one of another job is refused, naming it."""
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["chip_fast_checkpoint"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise ValueError(f"checkpoint {path} is damaged or not a chip_fast checkpoint ({e}): "
                             "delete it (its progress is lost) or use another checkpoint") from e
        if meta.get("identity") != identity:
            raise ValueError(f"checkpoint {path} belongs to another job (different model, data, "
                             "layers, classes or settings): delete it or use another checkpoint")
        done = meta.get("done_blocks")
        if (not isinstance(done, list) or len(done) != len(self.groups)
                or any(not isinstance(d, int) or not 0 <= d <= self.blocks for d in done)):
            raise ValueError(f"checkpoint {path} has a malformed progress record: delete it")
        return done

    def restore(self, paths: Sequence[str | Path]) -> bool:
        """Resume from checkpoint files: each class group takes the most advanced state found
        in any of them (so files written by any number of processes combine). Returns True
        when the fill statistics were among them."""
        from safetensors import safe_open
        identity = self.identity()
        paths = [Path(p) for p in paths]
        best: dict[int, tuple[int, int]] = {}   # group -> (blocks done, index in paths)
        for i, path in enumerate(paths):
            for g, d in enumerate(self._read_progress(path, identity)):
                if d > best.get(g, (0, -1))[0]:
                    best[g] = (d, i)
        have_stats = False
        for i, path in enumerate(paths):
            groups = [g for g, (_, j) in best.items() if j == i]
            if not groups and have_stats:
                continue   # nothing left to read in this file
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if not have_stats and all(f"mu/{l}" in keys for l in self.layers):
                    for l in self.layers:
                        self.mu[l] = f.get_tensor(f"mu/{l}").to(self.device)
                        self.sigma[l] = f.get_tensor(f"sigma/{l}").to(self.device)
                    have_stats = True
                for layer in self.layers if groups else []:
                    zy, y = f.get_tensor(f"sum_zy/{layer}"), f.get_tensor(f"sum_y/{layer}")
                    for g in groups:
                        rows = self.group_rows(g)
                        self.sum_zy[layer][rows] = zy[rows]
                        self.sum_y[layer][rows] = y[rows]
            for g in groups:
                self.done_blocks[g] = best[g][0]
        return have_stats

    # -- the whole job ----------------------------------------------------------------------
    def pending(self, groups: Iterable[int] | None = None) -> list[Unit]:
        """Units not yet done, of ``groups`` (default all), in the order they must run."""
        groups = range(len(self.groups)) if groups is None else groups
        return [Unit(g, b) for g in groups for b in range(self.done_blocks[g], self.blocks)]

    def unit_samples(self, unit: Unit) -> int:
        """Perturbed networks evaluated by a unit (all layers)."""
        st = self.settings
        per_class = min(st.samples_per_unit, st.samples_per_class - unit.block * st.samples_per_unit)
        return len(self.groups[unit.group]) * per_class * len(self.layers)

    def prepare(self, checkpoint: str | Path | None = None) -> None:
        """Resume from ``checkpoint`` when it exists, else measure the fill statistics."""
        if checkpoint is not None and Path(checkpoint).exists():
            self.restore([checkpoint])
            logger.warning("chip_fast: resuming from %s (%d of %d units done)", checkpoint,
                           sum(self.done_blocks), len(self.units))
        elif self.settings.fill != "zero":
            with torch.inference_mode():
                self.fill_statistics()

    def progress_bar(self, enabled: bool = True, label: str = ""):
        """A tqdm bar over all the job's samples, starting at those already done."""
        from tqdm.auto import tqdm
        total = sum(self.unit_samples(u) for u in self.units)
        done = total - sum(self.unit_samples(u) for u in self.pending())
        return tqdm(total=total, initial=done, unit="sample", unit_scale=True, disable=not enabled,
                    dynamic_ncols=True,
                    desc=f"CHIP {len(self.classes)} classes @ {', '.join(self.layers)}{label}")

    def run_pending(self, units: list[Unit], *, checkpoint: str | Path | None = None,
                    checkpoint_every: float = 300.0,
                    on_unit: Callable[[int], None] | None = None,
                    critical: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> None:
        """Run ``units`` in order; checkpoint atomically every ``checkpoint_every`` seconds and
        at the end. ``on_unit(samples)`` follows each unit (progress). Adding a unit's sums and
        writing a checkpoint happen inside ``critical()``, so a signal handler that saves (the
        distributed runner's) never sees a half-added unit."""
        last_save = time.monotonic()
        for unit in units:
            partial = self.run_unit(unit)
            with critical():
                self.add(unit, partial)
                self.done_blocks[unit.group] = unit.block + 1
            if on_unit is not None:
                on_unit(self.unit_samples(unit))
            if checkpoint is not None and time.monotonic() - last_save >= checkpoint_every:
                with critical():
                    self.save_checkpoint(checkpoint)
                last_save = time.monotonic()
        if checkpoint is not None:
            with critical():
                self.save_checkpoint(checkpoint)

    def run(self, *, progress: bool = True, checkpoint: str | Path | None = None,
            checkpoint_every: float = 300.0) -> Importance:
        try:
            self.prepare(checkpoint)
            with self.progress_bar(progress) as bar:
                self.run_pending(self.pending(), checkpoint=checkpoint,
                                 checkpoint_every=checkpoint_every, on_unit=bar.update)
        finally:
            self.close()
        return self.finish()

    def close(self) -> None:
        """Stop the decoding threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def finish(self) -> Importance:
        st = self.settings
        n = st.samples_per_class
        weights, grams, rs = {}, {}, {}
        for layer in self.layers:
            k = self.channels[layer]
            sum_z, sum_zz = mask_moments(st.seed, n, k, st.p_keep)
            gram, r = covariances(sum_z, sum_zz, self.sum_zy[layer], self.sum_y[layer], n)
            fit = solve_lasso(gram, r, alpha=st.alpha, nonneg=st.nonneg, tol=st.tol,
                              max_iter=st.max_iter)
            if not fit.converged:
                warnings.warn(f"FISTA did not reach tol={st.tol} in {fit.iterations} iterations "
                              f"at layer {layer}", stacklevel=3)
            w = torch.zeros(self.num_classes, k, dtype=torch.float32)
            w[torch.tensor(self.classes)] = fit.weights.float()
            weights[layer], grams[layer], rs[layer] = w, gram, r
        ids = getattr(self.source, "class_ids", None)
        names = getattr(self.source, "class_names", None)
        settings: dict[str, Any] = dataclasses.asdict(st)
        settings["chip_fast_version"] = __version__
        settings["views_per_class"] = {str(c): v for c, v in self.plan.views.items()}
        return Importance(weights=weights, classes=list(self.classes),
                          num_classes=self.num_classes, fingerprint=model_fingerprint(self.model),
                          settings=settings,
                          class_ids=list(ids) if ids and len(ids) == self.num_classes else None,
                          class_names=list(names) if names and len(names) == self.num_classes else None,
                          gram=grams, r=rs,
                          fill_mean={l: m.cpu() for l, m in self.mu.items()},
                          fill_std={l: m.cpu() for l, m in self.sigma.items()})


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    if was_training:
        warnings.warn("the model is in training mode; distilling it in eval mode", stacklevel=4)
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def distill_all_classes(model: nn.Module, data, layers: Sequence[str] | None = None, *,
                        classes: Iterable[int] | None = None, samples_per_class: int = 2048,
                        seed: int = 0, p_keep: float = 0.5, fill: str = "noise",
                        response: str = "logit", alpha: float = 0.1, nonneg: bool = False,
                        augment: bool | int = False, batch_size: int | None = None,
                        progress: bool = True, checkpoint: str | Path | None = None,
                        checkpoint_every: float = 300.0, **advanced: Any) -> Importance:
    """Distil the channel importance of every class at ``layers`` (METHOD.md, Stage 1).

    ``data``: an ImageFolderSource, a folder in the ``train/<wnid>/`` layout, or an
    ``(images, labels)`` pair of preprocessed tensors. ``layers=None`` picks the model's deepest
    convolutional stage and one at twice its resolution. ``advanced`` takes the other fields of
    DistillSettings (classes_per_unit, samples_per_unit, fill_stats_views, tol, max_iter).
    With ``checkpoint``, the sums are saved there atomically every ``checkpoint_every``
    seconds and a rerun of the same call resumes from it.
    """
    settings = DistillSettings(samples_per_class=samples_per_class, seed=seed, p_keep=p_keep,
                               fill=fill, response=response, alpha=alpha, nonneg=nonneg,
                               augment=augment, batch_size=batch_size, **advanced)
    with _eval_mode(model):
        job = DistillJob(model, data, layers, settings, classes)
        return job.run(progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
