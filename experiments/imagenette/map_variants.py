"""Candidate ways to make a map from a distilled importance and one forward's activations
(experiments/imagenette/maps_search.py). Each variant: (imp, acts by layer, labels, upsample)
-> (N, 224, 224) maps in [0, 1]. Layer 0 of the importance is the finer (mid) layer, the last
one the deepest."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from chip_fast.ops.class_maps import normalize_maps


def _rows(imp, layer: str, labels: torch.Tensor) -> torch.Tensor:
    return imp.weights[layer][labels].float()


# --- how a layer's channels are weighted: (a (N,K,h,w), w (N,K), imp, layer) -> (N,h,w) -------

def plain(a, w, imp, layer):
    return torch.einsum("nk,nkhw->nhw", w.clamp(min=0), a)


def per_scale(a, w, imp, layer, stat="mean", power=1.0):
    """Weight per unit of the channel's typical activation: W / scale^power."""
    s = (imp.fill_mean if stat == "mean" else imp.fill_std)[layer].float().abs()
    s = s.clamp(min=1e-3 * float(s.max()))
    return plain(a, w / s ** power, imp, layer)


def chan_norm(a, w, imp, layer, how="max"):
    """Each channel map of this image normalised (by its max or its mean) before weighting."""
    red = a.amax((2, 3), keepdim=True) if how == "max" else a.mean((2, 3), keepdim=True)
    scale = red + 1e-3 * red.amax(1, keepdim=True)
    return plain(a / scale, w, imp, layer)


def act_power(a, w, imp, layer, power=0.5):
    """Activations compressed (power < 1) before weighting: flatter within a channel."""
    return plain(a.clamp(min=0) ** power, w, imp, layer)


def log_act(a, w, imp, layer):
    return plain(torch.log1p(a.clamp(min=0)), w, imp, layer)


def norm_power(a, w, imp, layer, power=0.5):
    """Each channel of this image normalised to its max, then compressed."""
    red = a.amax((2, 3), keepdim=True)
    a = a / (red + 1e-3 * red.amax(1, keepdim=True))
    return plain(a.clamp(min=0) ** power, w, imp, layer)


def excess(a, w, imp, layer):
    """Only the activation above the channel's average over the distillation photos."""
    mu = imp.fill_mean[layer].float()[None, :, None, None]
    return plain((a - mu).clamp(min=0), w, imp, layer)


def active_gate(a, w, imp, layer, factor=1.0):
    """A channel counts on this image only where its mean exceeds factor x its average."""
    mu = imp.fill_mean[layer].float()[None, :]
    on = (a.mean((2, 3)) > factor * mu).float()
    return plain(a, w * on, imp, layer)


def significant(a, w, imp, layer, z=2.0):
    """Only weights at least z standard errors above zero."""
    se = imp.weight_se[layer].float()
    rows = torch.tensor([imp.classes.index(int(c)) for c in _LABELS[0]])
    return plain(a, w * (w > z * se[rows]).float(), imp, layer)


def top_k(a, w, imp, layer, k=10):
    w = w.clamp(min=0)
    keep = torch.zeros_like(w).scatter(1, w.topk(k, 1).indices, 1.0)
    return plain(a, w * keep, imp, layer)


def contrast(a, w, imp, layer, share=1.0, power=0.5):
    """The class's weight less ``share`` x the mean weight of every distilled class (what the
    class uses beyond what all classes use), activations at ``power``."""
    mean = imp.weights[layer][list(imp.classes)].float().clamp(min=0).mean(0)
    return plain(a.clamp(min=0) ** power, w.clamp(min=0) - share * mean, imp, layer)


def smoothed(a, w, imp, layer, power=0.5, k=3):
    """act_power's map averaged over k x k positions (a channel's evidence spread over the
    stride-neighbourhood its receptive field covers)."""
    m = act_power(a, w, imp, layer, power)
    return F.avg_pool2d(m[:, None], k, stride=1, padding=k // 2, count_include_pad=False)[:, 0]


def deep_selected(a, w, imp, layer, deep=None):
    """Per image, each channel's weight times the share of its activation inside the deep map."""
    d = F.interpolate(deep[:, None], size=a.shape[-2:], mode="bilinear",
                      align_corners=False)[:, 0]
    share = torch.einsum("nkhw,nhw->nk", a, d) / (a.sum((2, 3)) + 1e-6)
    return plain(a, w * share, imp, layer)


# The labels of the photos being mapped, for ``significant`` (standard errors are stored per
# distilled class, not per model class): set by ``variant`` so the weighting functions keep one
# signature.
_LABELS: list = [None]


def layer_map(weigh: Callable, imp, acts, labels, layer, up, **kw) -> torch.Tensor:
    return up(torch.relu(weigh(acts[layer], _rows(imp, layer, labels), imp, layer, **kw)))


# --- combinations ------------------------------------------------------------------------------

def variant(mid: Callable = plain, deep: Callable = plain, combine: str = "product",
            beta: float = 1.0, gamma: float = 1.0, alpha: float | None = None,
            deepsel: bool = False, alpha_at: str | None = None):
    """mid/deep weighting, then combine: "product" m * d^beta (normalised, then ^gamma),
    "mid" or "deep" alone; ``alpha`` refits both layers' Lasso at that alpha."""
    def fn(imp, acts, labels, up):
        _LABELS[0] = labels
        if alpha is not None:
            imp = _refit(imp, alpha) if alpha_at is None else _mixed(imp, alpha, alpha_at)
        lm, ld = imp.layers[0], imp.layers[-1]
        d = layer_map(deep, imp, acts, labels, ld, up)
        if combine == "deep":
            return d
        if deepsel:
            dl = normalize_maps(torch.relu(deep(acts[ld], _rows(imp, ld, labels), imp, ld)))
            m = layer_map(partial(deep_selected, deep=dl), imp, acts, labels, lm, up)
        else:
            m = layer_map(mid, imp, acts, labels, lm, up)
        if combine == "mid":
            return m
        return normalize_maps(m * d ** beta) ** gamma
    return fn


_REFITS: dict = {}


def _mixed(imp, alpha, at):
    """The importance with only the ``at`` ("mid" or "deep") layer refitted at ``alpha``."""
    import copy
    out = copy.copy(imp)
    layer = imp.layers[0] if at == "mid" else imp.layers[-1]
    out.weights = dict(imp.weights) | {layer: _refit(imp, alpha).weights[layer]}
    return out


def _refit(imp, alpha):
    key = (id(imp), alpha)
    if key not in _REFITS:
        _REFITS[key] = imp.refit(alpha)
    return _REFITS[key]


P = partial
VARIANTS: dict[str, Callable] = {
    "product, plain maps (power 1, the default before)": variant(),
    "mid alone": variant(combine="mid"),
    "deep alone": variant(combine="deep"),
    "mid W/mean": variant(mid=P(per_scale, stat="mean"), combine="mid"),
    "mid W/std": variant(mid=P(per_scale, stat="std"), combine="mid"),
    "mid W/sqrt(mean)": variant(mid=P(per_scale, stat="mean", power=0.5), combine="mid"),
    "mid chan/max": variant(mid=P(chan_norm, how="max"), combine="mid"),
    "mid chan/mean": variant(mid=P(chan_norm, how="mean"), combine="mid"),
    "mid excess over mean": variant(mid=excess, combine="mid"),
    "mid active gate": variant(mid=active_gate, combine="mid"),
    "mid significant 2se": variant(mid=significant, combine="mid"),
    "mid top-5": variant(mid=P(top_k, k=5), combine="mid"),
    "mid top-20": variant(mid=P(top_k, k=20), combine="mid"),
    "mid deep-selected": variant(deepsel=True, combine="mid"),
    "deep W/mean": variant(deep=P(per_scale, stat="mean"), combine="deep"),
    "product W/mean both": variant(mid=P(per_scale, stat="mean"), deep=P(per_scale, stat="mean")),
    "product mid W/mean": variant(mid=P(per_scale, stat="mean")),
    "product mid W/std": variant(mid=P(per_scale, stat="std")),
    "product mid chan/max": variant(mid=P(chan_norm, how="max")),
    "product mid excess": variant(mid=excess),
    "product mid active gate": variant(mid=active_gate),
    "product mid top-20": variant(mid=P(top_k, k=20)),
    "product mid deep-selected": variant(deepsel=True),
    "product deep^0.5": variant(beta=0.5),
    "mid act^0.5": variant(mid=act_power, combine="mid"),
    "product mid act^0.5": variant(mid=act_power),
    "product mid act^0.5 deep act^0.5": variant(mid=act_power, deep=act_power),
    "product mid act^0.25": variant(mid=P(act_power, power=0.25)),
    "product mid act^0.75": variant(mid=P(act_power, power=0.75)),
    "product mid act^0": variant(mid=P(act_power, power=1e-6)),
    "product mid log1p": variant(mid=log_act),
    "product mid act^0.5 alpha 0.01": variant(mid=act_power, alpha=0.01),
    "product mid chan/max^0.5": variant(mid=norm_power),
    "product mid act^0.5 deep^2": variant(mid=act_power, beta=2.0),
    "product mid chan/max alpha 0.03": variant(mid=P(chan_norm, how="max"), alpha=0.03),
    "mid alpha 0.03": variant(alpha=0.03, combine="mid"),
    "mid alpha 0.01": variant(alpha=0.01, combine="mid"),
    "product alpha 0.01": variant(alpha=0.01),
    "product alpha 0.001": variant(alpha=0.001),
    "product deep^2": variant(beta=2.0),
    "product alpha 0.03": variant(alpha=0.03),
    "product alpha 0.03 mid only": variant(alpha=0.03, alpha_at="mid"),
    "product alpha 0.03 deep only": variant(alpha=0.03, alpha_at="deep"),
    "product alpha 0.01 mid only": variant(alpha=0.01, alpha_at="mid"),
    "product alpha 0.01 deep only": variant(alpha=0.01, alpha_at="deep"),
    "product alpha 0.3": variant(alpha=0.3),
    "product mid contrast": variant(mid=contrast),
    "product mid contrast 0.5": variant(mid=P(contrast, share=0.5)),
    "product mid contrast and deep contrast": variant(mid=contrast, deep=P(contrast, power=1.0)),
    "product deep contrast": variant(mid=act_power, deep=P(contrast, power=1.0)),
    "mid contrast": variant(mid=contrast, combine="mid"),
    "product mid act^0.5 smoothed 3x3": variant(mid=smoothed),
}
