"""When a unit's response sums are not finite: find the first non-finite response again and
stop with the layer, class and sample that produced it (only then: the hot loop itself never
reads a response on the host)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .plan import DistillPlan
from .rows import Rows

if TYPE_CHECKING:
    from .runner import UnitRunner


def raise_non_finite(runner: "UnitRunner", plan: DistillPlan, inputs, prefix_out, rows: Rows,
                     mu, sigma) -> None:
    """Find the first non-finite response again (only when a unit's sums are not finite)
    and stop with the layer, class and sample that produced it."""
    st = runner.settings
    for layer in plan.layers:
        if plan.estimators[layer] == "exact":
            continue
        base = (runner.terms.baseline(layer, inputs[layer], prefix_out, rows.key_cls)
                if st.baseline == "view" else None)
        batches = rows.batches(runner._batch(layer))
        for (view, cls, sample, _), (_, responses, _) in zip(
                batches, runner._responses(layer, inputs[layer], prefix_out, rows, mu, sigma)):
            y = responses if responses.dim() == 1 else \
                responses.gather(1, cls[:, None])[:, 0]
            if base is not None:
                y = y - st.p_keep * base.index_select(0, view)
            bad = ~torch.isfinite(y)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise FloatingPointError(
                    f"non-finite {st.response} at layer {layer}, class {int(cls[i])}, "
                    f"sample {int(sample[i])}: the perturbed network diverges (try "
                    "fill='mean' or check the model)")
    raise FloatingPointError("a unit's response sums are not finite, but no response is: "
                             "the sums overflowed float64")
