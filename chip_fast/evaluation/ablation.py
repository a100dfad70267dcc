"""A check of the importance itself, not of the maps drawn with it: zero a class's k most
important channels at a layer and measure how much of the class's logit is lost on held-out
photos, against k random channels and the k channels ranked by gradient x activation.

A ranking that knows which channels carry the class removes more of its logit with fewer
channels. Gradient x activation summed over positions is the first-order estimate of exactly
this loss (the logit's change when A_k becomes 0), so it is the natural rival of a distilled
importance; random channels are the floor. Zeroing is the distillation's default fill, so the
check asks the question CHIP's regression was fitted to answer, on photos it never saw.

The model is cut at the layer with ``chip_fast.models.split`` (as distillation cuts it), so
the photos' prefix runs once and only the tail runs per ablation.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..models.split import SplitModel, split_model


def _split(model: torch.nn.Module, layer: str) -> SplitModel:
    split = split_model(model.eval(), [layer])
    if not isinstance(split, SplitModel):
        raise ValueError(f"channel ablation runs the model's tail after {layer!r}, and torch.fx "
                         f"cannot cut {type(model).__name__} there")
    return split


def _by_class(labels: Sequence[int], classes) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        if c in classes:
            rows.setdefault(int(c), []).append(i)
    return rows


def gradient_x_activation(model: torch.nn.Module, layer: str, images: torch.Tensor,
                          labels: Sequence[int], batch_size: int = 32) -> dict[int, torch.Tensor]:
    """Per class among ``labels``: the (K,) mean over its images of sum over positions of
    d z_c / d A_k * A_k at ``layer`` (z_c: the class's logit)."""
    split = _split(model, layer)
    dev = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for lo in range(0, len(images), batch_size):
        x = images[lo:lo + batch_size].to(dev)
        cls = torch.as_tensor([int(c) for c in labels[lo:lo + batch_size]], device=dev)
        with torch.no_grad():
            out = split.run_prefix(x)
        a = split.activation(out, layer).detach().requires_grad_(True)
        rows = torch.arange(len(a), device=dev)
        # a copy goes into the tail: a tail that works in place must not write into the leaf
        logits = split.run_tail(layer, a.clone(), out, rows)
        grad, = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a)
        score = (grad * a).detach().flatten(2).sum(2) if a.dim() > 2 else (grad * a).detach()
        for c in cls.unique().tolist():
            sel = cls == c
            sums[c] = sums.get(c, 0) + score[sel].sum(0).float().cpu()
            counts[c] = counts.get(c, 0) + int(sel.sum())
    return {c: sums[c] / counts[c] for c in sorted(sums)}


def ranking(scores: Mapping[int, torch.Tensor]) -> dict[int, list[int]]:
    """Channels of each class in decreasing order of ``scores[class]`` (ties by index)."""
    return {int(c): torch.sort(torch.as_tensor(s), descending=True, stable=True).indices.tolist()
            for c, s in scores.items()}


def _logit_without(split: SplitModel, layer: str, out: dict, c: int,
                   channels: Sequence[int]) -> torch.Tensor:
    """Class ``c``'s logit of the batch whose prefix outputs are ``out``, ``channels`` zeroed."""
    a = split.activation(out, layer).clone()
    if len(channels):
        a[:, torch.as_tensor(list(channels), dtype=torch.long, device=a.device)] = 0
    rows = torch.arange(len(a), device=a.device)
    return split.run_tail(layer, a, out, rows)[:, c].float().cpu()


def _class_drops(split: SplitModel, layer: str, x: torch.Tensor, c: int,
                 sets: Mapping[tuple[str, int], Sequence[Sequence[int]]],
                 batch_size: int, dev: torch.device,
                 ) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """(base logits (B,), {(name, k): (D, B) logit lost per channel set}) of one class's photos
    ``x``; ``sets`` holds D channel sets per (name, k)."""
    base, lost = [], {key: [] for key in sets}
    for lo in range(0, len(x), batch_size):
        out = split.run_prefix(x[lo:lo + batch_size].to(dev))
        b = _logit_without(split, layer, out, c, [])
        base.append(b)
        for key, channel_sets in sets.items():
            lost[key].append(torch.stack([b - _logit_without(split, layer, out, c, ch)
                                          for ch in channel_sets]))
    return torch.cat(base), {key: torch.cat(v, 1) for key, v in lost.items()}


@torch.no_grad()
def logit_drops(model: torch.nn.Module, layer: str, images: torch.Tensor,
                labels: Sequence[int], rankings: Mapping[str, Mapping[int, Sequence[int]]],
                ks: Sequence[int] = (1, 5, 20), random_draws: int = 10, seed: int = 0,
                batch_size: int = 64) -> dict:
    """Each photo's own-class logit minus that logit with the class's top-k channels of each
    ranking zeroed at ``layer``, and with k random channels (``random_draws`` draws per class
    and k, the same for all of its photos). Only photos whose class every ranking holds count.

    Returns ``{"layer", "n_images", "classes", "ks", "base_logit", "drop": {name: {k: mean}},
    "drop_se": {name: {k: standard error over photos}}, "per_photo": {name: {k: [drop of each
    photo, classes in increasing order]}}, "random_draw_sd": {k: sd over the draws of their
    mean}}``; the random baseline is the name ``"random"`` (mean over draws). Two rankings are
    compared photo by photo (paired) with ``per_photo``.
    """
    split = _split(model, layer)
    classes = set.intersection(*(set(int(c) for c in r) for r in rankings.values())) \
        if rankings else set()
    rows_of = _by_class(labels, classes)
    if not rows_of:
        raise ValueError("no photo shows a class that every ranking holds")
    dev = next(model.parameters()).device
    n_ch = split.activation(split.run_prefix(images[:1].to(dev)), layer).shape[1]
    gen = np.random.default_rng(seed)
    drops: dict[tuple[str, int], list[torch.Tensor]] = {}
    base_all = []
    for c, rows in sorted(rows_of.items()):
        sets = {(name, k): [list(r[c])[:k]] for name, r in rankings.items() for k in ks}
        sets.update({("random", k): [gen.choice(n_ch, size=min(k, n_ch), replace=False).tolist()
                                     for _ in range(random_draws)] for k in ks})
        base, lost = _class_drops(split, layer, images[rows], c, sets, batch_size, dev)
        base_all.append(base)
        for key, v in lost.items():
            drops.setdefault(key, []).append(v)
    result: dict = {"layer": layer, "n_images": sum(len(r) for r in rows_of.values()),
                    "classes": sorted(rows_of), "ks": list(ks),
                    "base_logit": float(torch.cat(base_all).mean()), "drop": {}, "drop_se": {},
                    "per_photo": {}, "random_draw_sd": {}}
    for (name, k), parts in drops.items():
        per_set = torch.cat(parts, 1).double().numpy()          # (D, photos)
        d = per_set.mean(0)                                     # each photo: mean over draws
        result["drop"].setdefault(name, {})[k] = float(d.mean())
        result["per_photo"].setdefault(name, {})[k] = d.tolist()
        result["drop_se"].setdefault(name, {})[k] = (float(d.std(ddof=1) / np.sqrt(len(d)))
                                                     if len(d) > 1 else 0.0)
        if name == "random":
            result["random_draw_sd"][k] = (float(per_set.mean(1).std(ddof=1))
                                           if len(per_set) > 1 else 0.0)
    return result
