"""The receptive field of a layer's cells: the theoretical one (the input pixels a cell can see,
from the convolutions' kernels and strides) and the *effective* one (ERF, Luo et al. 2016): the
input pixels that actually move the cell, measured as the gradient of one cell's activation with
respect to the input.

Measurement: each view is repeated once per probed channel; row ``r`` back-propagates the
activation of its own channel at the layer's central cell (``h // 2, w // 2``), so one backward
pass gives one gradient per (view, channel) row (the rows of a batch do not interact: the model
is in eval mode). ``|grad|`` is summed over colour and averaged over the rows; the ERF side is
that of the smallest square centred on the cell (in input pixels) holding ``share`` of the
gradient mass. The probed channels are, per view, ones that are on at that cell (a ReLU'd
channel that is off has no gradient), spread over their ranks; or given ones (per channel).

The share: the gradient mass of a cell decays like a Gaussian around it with long tails (Luo et
al.), so 100% is the theoretical field again. Measured on photos (``experiments/atlas_rf``,
MobileNetV2 and EfficientNet-Lite0 at their default layers, 224 px): 50% is the bright core
only (3.2-4.2 strides); 90% reaches 198-209 px of the 224 px view at the 7x7 layers (6.2-6.5
strides), a patch that is nearly the whole photo and says little of where the channel looks;
``ERF_SHARE = 0.8`` (5.4-6.7 strides) holds most of what moves the cell without the tails: what
an atlas patch should show of a channel's input. The mass's centroid is 1-8 px off the cell's
centre there (``Erf.offset``), so patches stay centred on the cell.

Owns the ERF and theoretical-RF measurements; the atlas that cuts its patches to the measured
side is ``chip_fast.atlas.collect``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..models.split import HookedModel, SplitModel

ERF_SHARE = 0.8     # share of the gradient mass the ERF square holds (module docstring)
ERF_VIEWS = 8       # views the atlas measures the ERF on (its first batch's first views)
ERF_CHANNELS = 4    # channels probed per view: rows = views x channels, one backward per layer
# Rows per forward/backward pass: the backward of all rows at once makes tensors large enough
# that their fresh pages fault on every call (as a CPU prefix's did: docs/stability.md, "A CPU
# prefix in chunks of rows"), which cost more than the passes themselves.
ERF_ROW_CHUNK = 8

LayerMaps = Callable[[torch.Tensor], dict[str, torch.Tensor]]   # input -> layer -> (N, C, h, w)


@dataclass(frozen=True)
class Erf:
    """A layer's measured effective receptive field."""
    side_px: int            # side of the centred square holding ``share`` of the gradient mass
                            # (0: no row moved the cell, nothing measured)
    stride: float           # input pixels per activation cell (view height / grid height)
    grid: tuple[int, int]   # the layer's (h, w)
    share: float
    rows: int               # (view, channel) rows with a non-zero gradient
    offset: tuple[float, float] = (0.0, 0.0)   # (y, x) px of the mass's centroid from the
    #                                            cell's centre (cell_centre)

    @property
    def side_strides(self) -> float:
        return self.side_px / self.stride


def layer_maps(split: SplitModel | HookedModel) -> LayerMaps:
    """The (N, C, h, w) maps of ``split``'s layers as a differentiable function of the input."""
    if isinstance(split, SplitModel):
        def prefix_maps(x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = split.run_prefix(x)
            return {l: split.feature_maps(out, l) for l in split.layers}
        return prefix_maps
    return lambda x: split.forward(x)[0]


def side_of_share(mass: torch.Tensor, centre: tuple[float, float], share: float) -> int:
    """The side (pixels) of the smallest square centred at ``centre`` = (y, x) in pixel units
    (pixel i spans [i, i + 1)) that holds ``share`` of the (H, W) ``mass``; the square's corner
    is rounded as ``patches.cut_patches`` rounds a patch's. Mass outside the image is none."""
    height, width = mass.shape
    m = mass.double()
    total = float(m.sum())
    if total <= 0:
        raise ValueError("the gradient mass is zero: no pixel moves the cell")
    integral = torch.zeros(height + 1, width + 1, dtype=torch.float64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    sides = torch.arange(1, 2 * max(height, width) + 1, dtype=torch.float64)
    y0 = (centre[0] - sides / 2).round()
    x0 = (centre[1] - sides / 2).round()
    ya, yb = y0.clamp(0, height).long(), (y0 + sides).clamp(0, height).long()
    xa, xb = x0.clamp(0, width).long(), (x0 + sides).clamp(0, width).long()
    held = integral[yb, xb] - integral[ya, xb] - integral[yb, xa] + integral[ya, xa]
    enough = (held >= share * total * (1 - 1e-9)).nonzero()
    return int(sides[enough[0, 0]])


def centroid_offset(mass: torch.Tensor, centre: tuple[float, float]) -> tuple[float, float]:
    """(y, x) pixels from ``centre`` to the centroid of the (H, W) ``mass`` (pixel i at i + 0.5):
    where the cell really looks, against where ``cell_centre`` puts it."""
    m = mass.double() / mass.double().sum()
    ys = torch.arange(m.shape[0], dtype=torch.float64) + 0.5
    xs = torch.arange(m.shape[1], dtype=torch.float64) + 0.5
    return float(m.sum(1) @ ys) - centre[0], float(m.sum(0) @ xs) - centre[1]


def cell_centre(grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """The centre, in input pixels, of the layer's central cell (h // 2, w // 2)."""
    (h, w), (height, width) = grid, size
    return (h // 2 + 0.5) * height / h, (w // 2 + 0.5) * width / w


def gradient_rows(maps: LayerMaps, views: torch.Tensor, layers: Sequence[str],
                  channels: dict[str, torch.Tensor] | None = None,
                  per_view: int = ERF_CHANNELS) -> dict[str, torch.Tensor]:
    """Per layer, (R, H, W) ``|grad|`` summed over colour of row r's channel at the central
    cell, w.r.t. view ``r % len(views)``. The channels are ``channels[layer]`` (R each), or
    without them ``per_view`` live ones of each view (``live_channels``, from one forward pass
    without gradients). Then one forward pass and one backward pass per layer for every
    ERF_ROW_CHUNK rows: each row's gradient is its own, whatever rows share its pass."""
    if channels is None:
        with torch.inference_mode():
            out = maps(views)
        channels = {l: live_channels(_centre(out[l]), per_view) for l in layers}
    rows = len(next(iter(channels.values())))
    parts = [_gradient_chunk(maps, views, layers, channels,
                             torch.arange(i, min(rows, i + ERF_ROW_CHUNK)))
             for i in range(0, rows, ERF_ROW_CHUNK)]
    return {layer: torch.cat([p[layer] for p in parts]) for layer in layers}


def _centre(a: torch.Tensor) -> torch.Tensor:
    """(N, C): each channel's value at the layer's central cell (h // 2, w // 2)."""
    return a[:, :, a.shape[-2] // 2, a.shape[-1] // 2]


def _gradient_chunk(maps: LayerMaps, views: torch.Tensor, layers: Sequence[str],
                    channels: dict[str, torch.Tensor], rows: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """``gradient_rows`` for the rows ``rows`` (clones: the arguments may be inference tensors)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = views[rows % len(views)].clone().requires_grad_(True)
        out = maps(x)
        grads = {}
        for i, layer in enumerate(layers):
            a = out[layer]
            chosen = channels[layer][rows].clone().to(a.device)
            cells = _centre(a)[torch.arange(len(rows), device=a.device), chosen]
            g, = torch.autograd.grad(cells.sum(), x, retain_graph=i + 1 < len(layers))
            grads[layer] = g.abs().sum(1).float().cpu()
    return grads


def live_channels(centre: torch.Tensor, per_view: int) -> torch.Tensor:
    """Rows' channels from each view's activations at the central cell (N, C): ``per_view``
    channels per view spread evenly over the ranks of its positive ones (a ReLU'd channel that
    is off there has no gradient), row r taking view ``r % N``: (per_view x N,)."""
    order = centre.argsort(1, descending=True)
    live = (centre > 0).sum(1, keepdim=True).clamp(min=1)                     # (N, 1)
    ranks = torch.arange(per_view, device=centre.device)[None] * live // per_view
    return order.gather(1, ranks).t().reshape(-1)


def spread_channels(count: int, rows: int) -> torch.Tensor:
    """``rows`` channel indices spread evenly over ``count`` channels (each once if it fits)."""
    return (torch.arange(rows) * count // rows).long()


def measure_erf(maps: LayerMaps, views: torch.Tensor, layers: Sequence[str],
                share: float = ERF_SHARE, channels_per_view: int = ERF_CHANNELS) -> dict[str, Erf]:
    """Each layer's ERF on ``views`` (N, 3, H, W), from ``channels_per_view`` live channels of
    each view (module docstring). Costs one forward and one backward pass per layer over the
    N x channels_per_view rows, with the activations kept for the backward."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    grids: dict[str, tuple[int, int]] = {}

    def recorded(x: torch.Tensor) -> dict[str, torch.Tensor]:   # the grids, from the same pass
        out = maps(x)
        grids.update({l: tuple(a.shape[-2:]) for l, a in out.items()})
        return out
    grads = gradient_rows(recorded, views, layers, per_view=channels_per_view)
    size = (views.shape[-2], views.shape[-1])
    out = {}
    for layer in layers:
        g, grid = grads[layer], grids[layer]
        live = int((g.flatten(1).amax(1) > 0).sum())
        centre, mass = cell_centre(grid, size), g.mean(0)
        side = side_of_share(mass, centre, share) if live else 0
        offset = centroid_offset(mass, centre) if live else (0.0, 0.0)
        out[layer] = Erf(side, size[0] / grid[0], grid, share, live, offset)
    return out


def theoretical_rf(model: nn.Module, layer: str, views: torch.Tensor) -> int:
    """The theoretical receptive field (pixels, one side) of ``layer``'s cells: 1 + sum of
    (kernel - 1) x dilation x the product of the strides before, over the convolutions and
    poolings the model runs up to the layer's output, in the order it runs them. Right for
    chains with residual additions (MobileNets, EfficientNets, ResNets); a model with parallel
    branches of different kernels gets the sum of all of them, an upper bound."""
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"no module {layer!r} in {type(model).__name__}")
    steps: list[tuple[int, int, int]] = []
    done: list[int] = []

    def record(m: nn.Module, _i, _o) -> None:
        if done:
            return
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, d = (_first(getattr(m, n, 1)) for n in ("kernel_size", "stride", "dilation"))
            steps.append((k, s, d))
        if m is modules[layer]:
            done.append(len(steps))
    handles = [m.register_forward_hook(record) for m in modules.values()]
    try:
        with torch.no_grad():
            model(views[:1])
    finally:
        for h in handles:
            h.remove()
    rf, jump = 1, 1
    for k, s, d in steps[:done[0]] if done else steps:
        rf += (k - 1) * d * jump
        jump *= s
    return rf


def _first(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)
