"""What a unit computes once per view beside its perturbed networks: the view's own response
(``baseline="view"``) and its mask slope (``control="view_slopes"``).

A unit computes them for its views; a distil-until-stable job keeps them with its views
between stages instead (``stage_prefixes``), each batch of them fixed by the views alone, so a
resumed job computes bit for bit what an uninterrupted one kept.
"""
from __future__ import annotations

import torch

from .inputs import JobInputs
from .plan import DistillPlan
from .settings import DistillSettings
from .slopes import view_slopes
from .tails import response_of


def tail_input(acts: torch.Tensor) -> torch.Tensor:
    """The activations in the layout the tail runs fastest in (channels-last for convolutions,
    on CPUs and tensor cores alike), so each perturbed batch copies rows of it without
    reordering."""
    if acts.dim() == 4:
        acts = acts.contiguous(memory_format=torch.channels_last)
    return acts


class ViewTerms:
    """The per-view terms of one job's layers."""

    def __init__(self, inputs: JobInputs, settings: DistillSettings) -> None:
        self.split, self.settings = inputs.split, settings
        self.affine, self.heads, self.tails = inputs.affine, inputs.heads, inputs.tails
        self.chains = inputs.chains

    def needed(self, plan: DistillPlan) -> bool:
        """Whether any sampled layer has a per-view term."""
        return any(plan.estimators[l] != "exact"
                   and (self.settings.baseline == "view" or plan.controls[l] != "none")
                   for l in plan.layers)

    def of(self, plan: DistillPlan, acts: dict[str, torch.Tensor], cls: torch.Tensor,
           mu: dict[str, torch.Tensor], prefix_out=None) -> dict[str, torch.Tensor]:
        """Every sampled layer's terms of the views whose unit inputs are ``acts`` and whose
        classes are ``cls``: ``base/<layer>`` (V,) and ``slopes/<layer>`` (V, K); ``prefix_out``
        for tails that read other prefix values."""
        out = {}
        for layer in plan.layers:
            if plan.estimators[layer] == "exact":
                continue
            if self.settings.baseline == "view":
                out[f"base/{layer}"] = self.baseline(layer, acts[layer], prefix_out, cls)
            if plan.controls[layer] != "none":
                out[f"slopes/{layer}"] = self.slopes(layer, acts[layer], cls, mu.get(layer))
        return out

    def slopes(self, layer: str, acts: torch.Tensor, cls: torch.Tensor,
               fill_mean: torch.Tensor | None) -> torch.Tensor:
        """(V, K) each view's mask slope (``slopes.view_slopes``); on the chain_per_view
        path, of the rest of the tail at the chain's maps (the mask enters there)."""
        st = self.settings
        dtype = torch.bfloat16 if st.tail_dtype == "bfloat16" else torch.float32
        chain = self.chains.get(layer)
        if chain is not None:
            return view_slopes(chain.rest, acts, cls, st.p_keep, chain.fill, st.response,
                               st.batch_size, dtype)
        return view_slopes(self.split.tails[layer], acts, cls, st.p_keep,
                           None if st.fill == "zero" else fill_mean, st.response, st.batch_size,
                           dtype)

    def baseline(self, layer: str, acts: torch.Tensor, prefix_out, cls: torch.Tensor
                 ) -> torch.Tensor:
        """(V,) the unperturbed response of each view for its own class ``cls``: the same tail
        on the layer's own activation."""
        kind, step = self.settings.response, self.settings.batch_size
        affine = self.affine.get(layer)
        if affine is not None:
            return (affine.class_logits(acts.float(), cls) if kind == "logit"
                    else response_of(affine.logits(acts.float()), cls, kind))
        head = self.heads.get(layer)
        if head is not None:
            return torch.cat([response_of(head.plain_logits(acts[i:i + step]), cls[i:i + step],
                                          kind) for i in range(0, len(cls), step)])
        tail, out = self.tails[layer], []
        # A tail that writes into its input (an in-place ReLU after the cut) gets a copy: the
        # slice is the unit's activations, which every perturbed batch reads afterwards.
        chain = self.chains.get(layer)
        mutates = (chain.rest if chain is not None else self.split.tails[layer]).mutates_input
        for i in range(0, len(cls), step):
            idx = torch.arange(i, min(i + step, len(cls)), device=acts.device)
            x = tail_input(acts[i:i + len(idx)])
            out.append(response_of(tail(x.clone() if mutates else x, prefix_out, idx),
                                   cls[i:i + len(idx)], kind))
        return torch.cat(out)
