"""How a layer's output lays out its channels, and the one channels-first form the rest reads.

Convolutional layers return (N, C, H, W) maps. Transformers return tokens: ViT and DeiT
(N, E + H*W, C), E leading class, distillation or register tokens (timm's ``num_prefix_tokens``);
Swin in timm (N, H, W, C) channels-last between its blocks and (N, H*W, C) inside them. A
``Layout`` turns each into channels first: maps stay (N, C, H, W), channels-last becomes
(N, C, H, W), tokens become (N, C, E + H*W) with every token kept, so the channel mask of a
perturbed network reaches the class and register tokens too (their channels carry the same
features, and the head reads the class token). Only maps drop the extra tokens
(``Layout.grid_maps``): they have no place on the image.

Nothing in a tensor says which axis is which, so the grid is read off the model: the output
resolutions of its convolutions (a transformer's patch embedding is one) and their halvings
(Swin's patch merging halves the grid with a Linear). Owns that inference and the conversions;
where they are applied (the prefix and the tails of a split) is ``chip_fast.models.split``'s.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.fx as fx
from torch import nn

MAPS, CHANNELS_LAST, TOKENS = "maps", "channels_last", "tokens"
# Class, distillation and register tokens number a handful; more than this many tokens beyond
# a grid means the axis is not a grid of tokens at all (an MLP's hidden width, say).
MAX_EXTRA_TOKENS = 32


@dataclass(frozen=True)
class Layout:
    """A layer's output layout: ``kind`` MAPS (N, C, H, W), CHANNELS_LAST (N, H, W, C) or
    TOKENS (N, extra + H*W, C) with ``extra`` leading tokens; ``grid`` (H, W) where known."""
    kind: str = MAPS
    grid: tuple[int, int] | None = None
    extra: int = 0

    def channels_first(self, a: torch.Tensor) -> torch.Tensor:
        """The model's own output -> (N, C, ...), every token kept (a view, no copy)."""
        if self.kind == CHANNELS_LAST:
            return a.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            return a.transpose(1, 2)
        return a

    def native_node(self, g: fx.Graph, node: fx.Node) -> fx.Node:
        """``node`` (channels first) turned back into the model's layout inside graph ``g``:
        the first op of a tail."""
        if self.kind == CHANNELS_LAST:
            return g.call_method("permute", (node, 0, 2, 3, 1))
        if self.kind == TOKENS:
            return g.call_method("transpose", (node, 1, 2))
        return node

    def grid_maps(self, a: torch.Tensor) -> torch.Tensor:
        """Channels-first ``a`` -> (N, C, H, W) feature maps for CHIP maps and the atlas: the
        extra tokens dropped, the grid tokens in raster order."""
        if self.kind == TOKENS:
            return a[:, :, self.extra:].unflatten(2, self.grid)
        return a


@contextlib.contextmanager
def conv_grids(module: nn.Module) -> Iterator[set[tuple[int, int]]]:
    """Record the output resolution of every Conv2d of ``module`` while inside (hooks removed
    on exit)."""
    seen: set[tuple[int, int]] = set()

    def record(_m, _i, out) -> None:
        if torch.is_tensor(out) and out.dim() == 4:
            seen.add((int(out.shape[-2]), int(out.shape[-1])))

    hooks = [m.register_forward_hook(record) for m in module.modules()
             if isinstance(m, nn.Conv2d)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def with_halvings(resolutions: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """``resolutions`` and every exact halving of them, grids of one cell left out."""
    out: set[tuple[int, int]] = set()
    for h, w in resolutions:
        while h * w > 1:
            out.add((h, w))
            if h % 2 or w % 2:
                break
            h, w = h // 2, w // 2
    return out


def infer_layout(shape: tuple[int, ...], conv_resolutions: set[tuple[int, int]],
                 batch: int) -> Layout | None:
    """The layout of an output of ``shape`` for ``batch`` images, given the model's convolution
    output resolutions; None where it is none of the three (attention maps, windows)."""
    shape = tuple(int(s) for s in shape)
    grids = with_halvings(conv_resolutions)
    if len(shape) == 4:
        # channels first wins a tie: (N, C, H, W) is what every convolutional layer returns
        if shape[2:] in grids or shape[3] == 1:
            return Layout(MAPS, shape[2:])
        if shape[1:3] in grids:
            return Layout(CHANNELS_LAST, shape[1:3]) if shape[0] == batch else None
        # (N, heads, tokens, tokens or width): attention weights, queries, keys
        fit = _token_fit(shape[2], grids)
        return None if fit is not None and fit[1][0] * fit[1][1] >= 16 else Layout(MAPS, shape[2:])
    if len(shape) == 3:
        if shape[0] != batch or shape[2] == 1:   # (N, C, 1): squeezed maps, not one channel
            return None
        fit = _token_fit(shape[1], grids)
        return Layout(TOKENS, fit[1], fit[0]) if fit is not None else None
    return None   # (N, C) vectors (a Linear, a flatten): no positions


def _token_fit(tokens: int, grids: set[tuple[int, int]]) -> tuple[int, tuple[int, int]] | None:
    """(extra tokens, grid) of the grid that ``tokens`` fills with the fewest extra ones."""
    fits = sorted((tokens - h * w, (h, w)) for h, w in grids
                  if 0 <= tokens - h * w <= min(MAX_EXTRA_TOKENS, h * w - 1))
    return fits[0] if fits else None


def token_grid(shape: tuple[int, ...], conv_resolutions: set[tuple[int, int]],
               batch: int) -> tuple[int, int] | None:
    """(H, W) of an output that is tokens or channels-last maps over a grid, else None."""
    layout = infer_layout(shape, conv_resolutions, batch)
    return layout.grid if layout is not None and layout.kind != MAPS else None
