"""The view-slope control variate, on the engine's side: each view's slope and the per-batch
sums of its term (``chip_fast.solve.control`` turns them into the sums the fit reads).

A view's slope is the gradient of its class's response with respect to the keep mask, taken at
the mean-masked activation (every channel kept with weight p_keep, the fill's mean elsewhere):
one backward pass through the tail per view, about as dear as a Grad-CAM. It is a control
variate, not an estimate: whatever it misses only leaves noise in, and the estimand stays the
sampled regression's (docs/stability.md, "View slopes").
"""
from __future__ import annotations

import dataclasses

import torch

from ..models.split import Tail
from ..ops.response_sums import response_sums_reference
from ..solve.control import adjusted
from .plan import DistillPlan
from .rows import Rows
from .settings import DistillSettings
from .state import DistillState
from .tails import response_of


def view_slopes(tail: Tail, acts: torch.Tensor, classes: torch.Tensor, p_keep: float,
                fill_mean: torch.Tensor | None, response: str, batch: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(V, K) float64: for each view (its layer activation, a row of ``acts`` (V, K, ...)) and
    its class, d response / d z_k at z = p_keep, i.e. the sum over positions of the gradient at
    ``f + p_keep (a - f)`` times ``a - f`` (f: the fill's mean, None for zero fill).

    ``dtype`` bfloat16: the tail's forward and backward under bfloat16 autocast, as the job's
    tails run; a slope only needs to predict the response, so its rounding costs a little of
    the control's variance cut and nothing of the estimand."""
    out = []
    low = dtype == torch.bfloat16
    # The runner works in inference mode; the gradient needs ordinary tensors, and only the
    # input's (torch.autograd.grad leaves the model's parameters alone).
    with torch.inference_mode(False), torch.enable_grad():
        for i in range(0, len(acts), batch):
            a = acts[i:i + batch].clone().float()
            d = a if fill_mean is None else a - fill_mean.float().view(1, -1, *[1] * (a.dim() - 2))
            x = (a - (1 - p_keep) * d).requires_grad_(True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=low):
                logits = tail.module(x.clone() if tail.mutates_input else x).float()
            # (a clone: classes made in inference mode cannot be saved for the backward)
            y = response_of(logits, classes[i:i + batch].clone(), response).sum()
            (grad,) = torch.autograd.grad(y, x)
            out.append((grad * d).flatten(2).sum(2).double())
    return torch.cat(out)


def control_sums(masks: torch.Tensor, y: torch.Tensor, slopes: torch.Tensor,
                 sum_rows: torch.Tensor, n_rows: int, p_keep: float
                 ) -> tuple[torch.Tensor, ...]:
    """One batch's streamed sums (``chip_fast.solve.control.CONTROL_SUMS``) per sum row:
    sum z u (n_rows, K), sum q (n_rows, K), sum u, sum u^2, sum u y (n_rows,), with
    ``u = q . (z - p_keep)``; ``masks`` (T, K), ``y`` (T,) the responses as the response sums
    take them, ``slopes`` (T, K) each row's view's slope."""
    u = ((masks.to(torch.float64) - p_keep) * slopes).sum(1)
    zu, su, suu = response_sums_reference(masks, u, sum_rows, n_rows)
    sq = torch.zeros(n_rows, slopes.shape[1], dtype=torch.float64, device=slopes.device)
    sq.index_add_(0, sum_rows, slopes)
    suy = torch.zeros(n_rows, dtype=torch.float64, device=slopes.device)
    suy.index_add_(0, sum_rows, u * y.to(torch.float64))
    return zu, sq, su, suu, suy


class ControlBatches:
    """The control variate's sums of one layer over one unit's batches (rows ``rows``, batches
    of ``batch``): ``control_sums`` per batch, with the responses and masks the response sums
    get and ``slopes`` (V, K), those of the unit's views (``view_slopes``).

    On the kernel path (no masks given: the kernels regenerate theirs) a batch only keeps its
    responses, and the sums run over many batches at once when the unit ends: their few dozen
    small ops per batch would otherwise be most of a GPU batch's launches."""

    # rows of float64 masks summed at once when the unit ends (a bound on that copy's memory)
    DEFERRED_BYTES = 64 << 20

    def __init__(self, st: DistillSettings, slopes: torch.Tensor, rows: Rows, n_rows: int,
                 batch: int) -> None:
        self.st, self.rows, self.n_rows, self.batch = st, rows, n_rows, batch
        self.slopes, self.channels = slopes, slopes.shape[1]
        self.sums: tuple[torch.Tensor, ...] | None = None
        self.deferred: list[torch.Tensor] = []   # kernel path: each batch's class responses
        self.base: torch.Tensor | None = None

    def add(self, b: int, responses: torch.Tensor, base: torch.Tensor | None,
            masks: torch.Tensor | None) -> None:
        view, cls, _, sum_row = self.rows.batches(self.batch)[b]
        y = responses if responses.dim() == 1 else responses.gather(1, cls[:, None])[:, 0]
        if masks is None:
            if len(self.deferred) != b:
                raise RuntimeError("the control variate's batches must come in order")
            # (a copy where y is the tail's output buffer, which the next batch fills)
            self.deferred.append(y.clone() if y is responses else y)
            self.base = base
            return
        if base is not None:
            y = y - self.st.p_keep * base.index_select(0, view)
        self._add(control_sums(masks, y, self.slopes.index_select(0, view), sum_row,
                               self.n_rows, self.st.p_keep))

    def _add(self, part: tuple[torch.Tensor, ...]) -> None:
        self.sums = part if self.sums is None else tuple(a + c for a, c in zip(self.sums, part))

    def _flush(self) -> None:
        """The deferred batches' sums: they are the unit's first rows, in order (rows are
        sample-major), summed with the unit's masks (drawn once, as the head path draws them)
        in ranges of rows within ``DEFERRED_BYTES``."""
        if not self.deferred:
            return
        rows, st = self.rows, self.st
        y = torch.cat(self.deferred)
        unit = rows.unit_masks(st, self.channels)
        step = max(1, self.DEFERRED_BYTES // (8 * self.channels))
        for lo in range(0, len(y), step):
            hi = min(lo + step, len(y))
            view, part = rows.view[lo:hi], y[lo:hi]
            if self.base is not None:
                part = part - st.p_keep * self.base.index_select(0, view)
            self._add(control_sums(unit.index_select(0, rows.sample[lo:hi] - rows.samples.start),
                                   part, self.slopes.index_select(0, view),
                                   rows.sum_row[lo:hi], self.n_rows, st.p_keep))
        self.deferred = []

    def result(self) -> tuple[torch.Tensor, ...]:
        self._flush()
        if self.sums is None:
            raise RuntimeError("a unit with no batch has no control sums")
        return self.sums


def layer_sums(plan: DistillPlan, state: DistillState, layer: str, counts: torch.Tensor,
               rows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The per-fold sums a fit of ``layer`` reads for ``rows`` (default all classes), which
    hold ``counts`` samples each: the response sums, or with the control variate those of
    ``y - b h`` (``chip_fast.solve.control.adjusted``); and each class's b (None without)."""
    rows = torch.arange(len(plan.classes)) if rows is None else rows
    szy, sy, syy = (t[layer][rows] for t in (state.sum_zy, state.sum_y, state.sum_yy))
    if layer not in state.control:
        return szy, sy, syy, None
    return adjusted(dataclasses.asdict(plan.settings), counts, szy, sy, syy,
                    {k: v[rows] for k, v in state.control[layer].items()})
