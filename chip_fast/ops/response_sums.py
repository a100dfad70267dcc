"""Stage 1 response sums: per row group (class slot and fold), the float64 sums of z * y, of y
and of y^2 over its samples.

With the integer mask counts of ``chip_fast.solve.stats.mask_moments`` these are all the regression
needs (``chip_fast.solve.stats.covariances``, METHOD.md).

This module owns the op ``response_sums``: its PyTorch reference and the dispatch to the Triton
kernel (``chip_fast.kernels.response_sums``), which regenerates the masks from their keys instead
of reading them; and ``UnitSums``, the same sums over the batches of a distillation unit, as the
engine adds them (on the kernel path one launch per batch). It may not define random streams
(the counter layout is ``rng``'s; the kernel gets it from here as arguments) nor import triton
or the kernels at module level: the PyTorch path must run where Triton is absent.
"""
from __future__ import annotations

import torch

from .. import rng


def response_sums_reference(masks: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                            n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row-group float64 sums: (sum_i z_i * y_i  (n_rows, K), sum_i y_i  (n_rows,),
    sum_i y_i^2 (n_rows,)).

    masks: (T, K) bool; y: (T,) responses; rows: (T,) group (class slot) of each sample.
    """
    y64 = y.to(torch.float64)
    # One (rows x T) @ (T x K) product with each sample's y in its row's column: a float64 GEMM,
    # twice as fast on a CPU as scattering a (T, K) float64 copy of the masks.
    spread = torch.zeros(n_rows, len(y), dtype=torch.float64, device=y.device)
    spread[rows, torch.arange(len(y), device=y.device)] = y64
    szy = spread @ masks.to(torch.float64)
    sy = torch.zeros(n_rows, dtype=torch.float64, device=y.device)
    sy.index_add_(0, rows, y64)
    syy = torch.zeros(n_rows, dtype=torch.float64, device=y.device)
    syy.index_add_(0, rows, y64 * y64)
    return szy, sy, syy


def response_sums_kernel(seed: int, samples: torch.Tensor, p_keep: float, channels: int,
                         y: torch.Tensor, rows: torch.Tensor, n_rows: int, validate: bool = True,
                         design: str = "independent", folds: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference(rng.keep_masks(seed, samples, channels, p_keep), y, rows,
    n_rows)`` by the Triton kernel, whatever the device (the tests run it on CPU under Triton's
    interpreter): ``rng``'s key words, keep threshold and mask tag, handed to
    ``chip_fast.kernels.response_sums.response_sums_triton``."""
    from ..kernels.response_sums import response_sums_triton
    return response_sums_triton(rng.seed_key(seed), rng.keep_threshold(p_keep),
                                rng.MASK_TAG_WORD, samples, channels, y, rows, n_rows,
                                validate=validate,
                                design=rng.design_args(design, channels, p_keep, folds))


def response_sums(y: torch.Tensor, rows: torch.Tensor, n_rows: int, *, seed: int,
                  samples: torch.Tensor, p_keep: float, channels: int,
                  masks: torch.Tensor | None = None, validate: bool = True,
                  design: str = "independent", folds: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``response_sums_reference``. On CUDA a Triton kernel regenerates the masks from their keys
    (seed, samples, p_keep) instead of reading them; the PyTorch path needs ``masks``."""
    from .backend import use_triton
    if use_triton(y):
        return response_sums_kernel(seed, samples, p_keep, channels, y, rows, n_rows,
                                    validate=validate, design=design, folds=folds)
    if masks is None:
        raise ValueError("the PyTorch path of response_sums needs the masks")
    return response_sums_reference(masks, y, rows, n_rows)


def sums_plan(sum_rows: torch.Tensor, samples: torch.Tensor, classes: torch.Tensor,
              views: torch.Tensor, n_rows: int, batch: int) -> tuple[tuple[torch.Tensor, ...],
                                                                   int]:
    """The kernel path's index work for all the batches of ``batch`` rows of a unit, once, on
    the host (the rows' (T,) int64 sum rows, samples, classes and views): ((order, bounds,
    samples, classes, views), splits) as ``UnitSums`` takes them, samples, classes and views in
    each batch's sorted order (``chip_fast.kernels.response_sums.batch_plan``)."""
    from ..kernels.response_sums import batch_plan
    order, bounds, splits = batch_plan(sum_rows, n_rows, batch)
    at = torch.arange(len(order)) // batch * batch + order
    return (order, bounds, samples[at], classes[at], views[at]), splits


class UnitSums:
    """The sums of one layer over one unit's batches, float64: sum z*y (n_rows, K), sum y and
    sum y^2 (n_rows,), added batch by batch in batch order (``response_sums_reference`` of each
    batch on the PyTorch path, so the result is what adding those gives).

    ``add(b, responses, base, masks)``: batch b's responses, a (T, C) matrix whose row i holds
    row i's response in the column of its class, or the (T,) responses; ``base`` (V,): each
    view's unperturbed response, taken ``p_keep`` times from its rows' responses (None: no
    baseline); ``masks``: the batch's (T, K) keep masks (the PyTorch path needs them).

    With a ``plan`` (``sums_plan``, on the device) a batch is one kernel launch and no other
    device work: the kernel gathers the responses, subtracts the baseline, regenerates the
    masks and adds into per-split accumulators, reduced once by ``result``. Without one,
    ``batches`` gives each batch's (classes, views, sum rows) for the PyTorch path.
    """

    def __init__(self, n_rows: int, channels: int, device: torch.device, *, seed: int,
                 p_keep: float, design: str, folds: int, batch: int,
                 plan: tuple[tuple[torch.Tensor, ...], int] | None = None,
                 batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
                 ) -> None:
        self.p_keep, self.batch = p_keep, batch
        self.design = rng.design_args(design, channels, p_keep, folds)
        self.n_rows, self.plan, self.batches = n_rows, plan, batches
        # The kernel's key words, made once per unit rather than per batch.
        self.words = rng.seed_key(seed), rng.keep_threshold(p_keep), rng.MASK_TAG_WORD
        splits = plan[1] if plan is not None else 1
        f64 = dict(dtype=torch.float64, device=device)
        self.sums = (torch.zeros(n_rows, splits, channels, **f64),
                     torch.zeros(n_rows, splits, **f64), torch.zeros(n_rows, splits, **f64))
        # The PyTorch path adds into split 0 through views made once (x[:, 0] += a would
        # select and write back each time).
        self._first = tuple(t[:, 0] for t in self.sums)

    def add(self, b: int, responses: torch.Tensor, base: torch.Tensor | None,
            masks: torch.Tensor | None) -> None:
        if self.plan is not None:
            from ..kernels.response_sums import response_sums_accumulate
            response_sums_accumulate(*self.words, self.plan[0], b, self.batch, responses, base,
                                     self.p_keep, self.sums, self.design)
            return
        if masks is None:
            raise ValueError("the PyTorch path of the response sums needs the masks")
        classes, views, rows = self.batches[b]
        y = responses if responses.dim() == 1 else responses.gather(1, classes[:, None])[:, 0]
        if base is not None:
            y = y - self.p_keep * base.index_select(0, views)
        for total, part in zip(self._first, response_sums_reference(masks, y, rows,
                                                                    self.n_rows)):
            total += part

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.sums[0].shape[1] == 1:
            return self._first
        return tuple(t.sum(1) for t in self.sums)
