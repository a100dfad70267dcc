"""The channel atlas: what each channel of a distilled layer responds to, shown as the patches of
the distillation photos where it fires most.

CHIP's output is which channels carry a class; the atlas says what those channels are. A
channel's meaning does not depend on the class, so the atlas keeps, for every channel of every
layer, its ``k`` strongest views over all the photos a distillation reads (streamed top-k of the
channel's spatial maximum, one entry per view), with a small uint8 RGB patch cut around the
location of that maximum. Each class's top channels are picked from the importance after the
solve (:func:`top_channels`). The atlas is filled by an observer of the prefix passes the
distillation already makes (``UnitRunner.observers``), never by a second pass over the data;
atlases of several processes or checkpoints merge (:meth:`ChannelAtlas.merge`) and travel as
plain tensors (:meth:`ChannelAtlas.to_tensors`, safetensors-friendly).

Patch geometry: a square centred on the cell of the maximum and shifted to lie inside the view
(clamped to it), resampled to ``patch_px`` pixels. Its side is, per layer, the cell's measured
*effective* receptive field (``patch_scale=None``, the default): the side of the centred square
holding 80% of the gradient of a cell w.r.t. the input (``receptive_field``), measured by the
observer on its first 8 views (8 x 4 rows, a forward and backward pass per 8 rows, a one-off;
docs/design.md says what it costs). A float ``patch_scale`` cuts that many
strides (input pixels per activation cell) instead. The side used is recorded per layer
(``sides``, in strides; each patch's in ``where``) and travels in the atlas tensors. Per layer,
not per channel: a channel's own side is within about +-20% of its layer's (below), and each
channel measured would cost rows of its own.

Measured (``python -m experiments.atlas_rf``, 16 imagenette photos, 224 px): the ERF holds 80%
of the gradient within 5.4-6.7 strides (MobileNetV2 features.14.conv.0 91 px = 5.7 strides,
features.18 172 px = 5.4; EfficientNet-Lite0 features.6.0.block.0 107 px = 6.7, features.8 193
px = 6.0), channels of a layer within about +-20% of that; the theoretical field is 15-27
strides, the whole view. The 3 strides the atlas used to cut (after Luo et al., 2016, never
measured) hold about half of the gradient (50%: 3.2-4.2 strides).

Colours: the views are preprocessed model inputs. With the source's ``Preprocess`` (an
ImageFolderSource has one; give ``preprocess=`` for tensors) they are denormalised exactly. For
an ``(images, labels)`` TensorSource the normalisation is unknown, so each view is stretched
linearly to [0, 1] as a whole (one offset and scale for all three colour channels): relative
colours survive any normalisation whose per-channel stds are similar (ImageNet's: 0.22-0.23).

Owns the atlas, its observer and its tensors; distillation is ``chip_fast.distill.job``'s and the
reports are the demo's and ``chip_fast.cli.atlas``'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import torch

from ..data.preprocess import Preprocess
from ..models.split import HookedModel, SplitModel, split_model
from ..ops.class_maps import upsample_normalize_reference
from .patches import cut_patches
from .receptive_field import ERF_VIEWS, layer_maps, measure_erf

if TYPE_CHECKING:
    from ..importance.core import Importance

PATCH_PX = 40      # stored patch side (pixels): 4.8 kB per patch
TOP_K = 6          # views kept per channel
PATCH_SCALE: float | None = None   # patch side: None, each layer's measured ERF; a float, that
#                                    many strides of the layer (see the module docstring)
LEGACY_SCALE = 3.0     # the fixed side (strides) of atlases stored before sides were recorded
FALLBACK_SCALE = 6.0   # strides, where no probed channel moves the cell (measured: 5.4-6.7)

Denormalize = Callable[[torch.Tensor], torch.Tensor]   # (B, 3, H, W) input -> [0, 1] RGB


def denormalizer(preprocess: Preprocess | None) -> Denormalize:
    """Views back to [0, 1] RGB: exactly with a Preprocess, else each view stretched as a whole."""
    if preprocess is not None:
        def exact(x: torch.Tensor) -> torch.Tensor:
            mean = x.new_tensor(preprocess.mean)[:, None, None]
            std = x.new_tensor(preprocess.std)[:, None, None]
            return (x * std + mean).clamp(0, 1)
        return exact

    def stretch(x: torch.Tensor) -> torch.Tensor:
        lo = x.flatten(1).amin(1)[:, None, None, None]
        hi = x.flatten(1).amax(1)[:, None, None, None]
        return (x - lo) / (hi - lo).clamp(min=1e-6)
    return stretch


@dataclass
class LayerAtlas:
    """The ``k`` strongest views of each of the K channels of one layer, strongest first.

    Empty slots have value -inf and key (-1, -1)."""
    value: torch.Tensor    # (K, k) float32: the channel's maximum on the view
    key: torch.Tensor      # (K, k, 2) int64: (class, view) of the distillation view
    where: torch.Tensor    # (K, k, 3) int32: (y0, x0, side) of the patch in the view's pixels
    patch: torch.Tensor    # (K, k, P, P, 3) uint8 RGB

    @classmethod
    def empty(cls, channels: int, k: int, patch_px: int) -> "LayerAtlas":
        return cls(torch.full((channels, k), float("-inf")),
                   torch.full((channels, k, 2), -1, dtype=torch.int64),
                   torch.zeros(channels, k, 3, dtype=torch.int32),
                   torch.zeros(channels, k, patch_px, patch_px, 3, dtype=torch.uint8))

    @property
    def channels(self) -> int:
        return self.value.shape[0]

    def count(self) -> torch.Tensor:
        """(K,) number of filled slots per channel."""
        return torch.isfinite(self.value).sum(1)


def _check_layer(layer: str, a: LayerAtlas) -> None:
    """The four tensors of a stored layer atlas agree in shape and dtype."""
    if a.value.dim() != 2:
        raise ValueError(f"atlas layer {layer}: value must be (channels, k), is {tuple(a.value.shape)}")
    c, k = a.value.shape
    p = a.patch.shape[2] if a.patch.dim() == 5 else -1
    want = {"value": ((c, k), torch.float32), "key": ((c, k, 2), torch.int64),
            "where": ((c, k, 3), torch.int32), "patch": ((c, k, p, p, 3), torch.uint8)}
    for name, (shape, dtype) in want.items():
        t = getattr(a, name)
        if tuple(t.shape) != shape or t.dtype != dtype or p < 1:
            raise ValueError(f"atlas layer {layer}: {name} is {t.dtype} {tuple(t.shape)}, "
                             f"expected {dtype} {shape}")


def _select(value: torch.Tensor, key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (K, k) into the candidates (K, n) of the k largest values per channel, one per
    key (a view seen twice, or present in two merged atlases, counts once); -1 pads."""
    order = value.argsort(dim=1, descending=True, stable=True)
    v = value.gather(1, order)
    kk = key.gather(1, order[..., None].expand(-1, -1, 2))
    kid = kk[..., 0] * (1 << 32) + kk[..., 1]
    n = v.shape[1]
    same = kid[:, :, None] == kid[:, None, :]                         # (K, n, n)
    earlier = torch.ones(n, n, dtype=torch.bool, device=v.device).tril(-1)
    dup = (same & earlier).any(2)
    keep = torch.isfinite(v) & ~dup
    rank = keep.long().cumsum(1) - 1
    out = torch.full((v.shape[0], k), -1, dtype=torch.long, device=v.device)
    rows, cols = (keep & (rank < k)).nonzero(as_tuple=True)
    out[rows, rank[rows, cols]] = order[rows, cols]
    return out


def _gather(t: torch.Tensor, index: torch.Tensor, fill) -> torch.Tensor:
    """t[c, index[c, j]] along dim 1, ``fill`` where index is -1."""
    safe = index.clamp(min=0)
    shape = (*index.shape, *t.shape[2:])
    g = t.gather(1, safe.view(*index.shape, *([1] * (t.dim() - 2))).expand(shape))
    mask = (index < 0).view(*index.shape, *([1] * (t.dim() - 2)))
    return g.masked_fill(mask, fill)


@dataclass
class ChannelAtlas:
    """Per layer, each channel's strongest distillation views with their patches.

    ``observe`` takes a batch of views and their activations; ``merge`` combines atlases of
    disjoint or overlapping view sets (the result is the same whatever the order, but for ties
    of equal values); ``to_tensors``/``from_tensors`` store it. ``sides`` is each layer's patch
    side in strides: ``patch_scale``, or with ``patch_scale=None`` the layer's ERF measured on
    the first views (``measure``; the observer does it), ``measured_on`` the smallest
    (class, view) key of those views."""
    k: int = TOP_K
    patch_px: int = PATCH_PX
    patch_scale: float | None = PATCH_SCALE
    layers: dict[str, LayerAtlas] = field(default_factory=dict)
    sides: dict[str, float] = field(default_factory=dict)
    measured_on: tuple[int, int] | None = None
    _seen: set[tuple[int, int]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.patch_scale is not None and not self.patch_scale > 0:
            raise ValueError(f"patch_scale must be > 0 strides, or None (the measured "
                             f"receptive field), got {self.patch_scale!r}")

    @classmethod
    def empty(cls, channels: dict[str, int], k: int = TOP_K, patch_px: int = PATCH_PX,
              patch_scale: float | None = PATCH_SCALE) -> "ChannelAtlas":
        """An atlas of ``channels`` (layer -> K) with every slot empty: the same tensors' shapes
        in every process of a job, whatever each one sees."""
        return cls(k, patch_px, patch_scale,
                   {l: LayerAtlas.empty(c, k, patch_px) for l, c in channels.items()})

    def side(self, layer: str) -> float:
        """The layer's patch side in strides (recorded in ``sides`` on first use)."""
        if self.patch_scale is not None:
            return self.sides.setdefault(layer, float(self.patch_scale))
        if layer not in self.sides:
            raise ValueError(f"atlas layer {layer}: its patch side (the measured receptive field) "
                             "is not known yet: measure it first (ChannelAtlas.measure; the "
                             "observer does it on its first views) or give a patch_scale")
        return self.sides[layer]

    def measure(self, split: SplitModel | HookedModel, keys: Sequence[tuple[int, int]],
                views: torch.Tensor) -> None:
        """Each of ``split``'s layers' ERF side (``receptive_field.measure_erf``) on the first
        ERF_VIEWS ``views`` (on the model's device) becomes its patch side."""
        n = min(ERF_VIEWS, len(views))
        for layer, erf in measure_erf(layer_maps(split), views[:n], split.layers).items():
            self.sides[layer] = erf.side_strides if erf.side_px else FALLBACK_SCALE
        self.measured_on = min(tuple(int(i) for i in key) for key in keys[:n])

    def observe(self, keys: Sequence[tuple[int, int]], views: torch.Tensor,
                activations: dict[str, torch.Tensor], denormalize: Denormalize) -> None:
        """Add the views (B, 3, H, W) with their (class, view) ``keys`` and each layer's
        activation (B, K, h, w); views whose key was observed before are skipped."""
        fresh = [i for i, key in enumerate(keys) if tuple(key) not in self._seen]
        if not fresh:
            return
        sides = {layer: self.side(layer) for layer in activations}
        self._seen.update(tuple(keys[i]) for i in fresh)
        idx = torch.tensor(fresh, device=views.device)
        views = views.index_select(0, idx)
        rgb = None   # denormalised only if some view enters some channel's top k
        batch_keys = torch.tensor([list(keys[i]) for i in fresh], dtype=torch.int64)
        for layer, acts in activations.items():
            acts = acts.index_select(0, idx.to(acts.device)).float()
            b, channels, h, w = acts.shape
            best, pos = acts.flatten(2).amax(2), acts.flatten(2).argmax(2)     # (B, K)
            cur = self.layers.setdefault(layer, LayerAtlas.empty(channels, self.k, self.patch_px))
            value = torch.cat([cur.value, best.t().cpu()], 1)                    # (K, k + B)
            key = torch.cat([cur.key, batch_keys[None].expand(channels, -1, -1)], 1)
            chosen = _select(value, key, self.k)
            new = chosen >= self.k                 # slots filled from this batch
            if rgb is None and new.any():
                rgb = denormalize(views.float())
            patch = _gather(cur.patch, chosen.clamp(max=self.k - 1), 0)
            where = _gather(cur.where, chosen.clamp(max=self.k - 1), 0)
            rows, slots = new.nonzero(as_tuple=True)
            if len(rows):
                view = chosen[rows, slots] - self.k
                flat = pos.t().cpu()[rows, view]
                cells = torch.stack([flat // w, flat % w], 1)
                p, wh = cut_patches(rgb, view.to(rgb.device), cells.to(rgb.device), (h, w),
                                    self.patch_px, sides[layer])
                patch[rows, slots], where[rows, slots] = p, wh
            self.layers[layer] = LayerAtlas(_gather(value, chosen, float("-inf")),
                                            _gather(key, chosen, -1), where, patch)

    def merge(self, other: "ChannelAtlas") -> "ChannelAtlas":
        """The atlas of both view sets (each channel's k strongest of the two, one per key).
        Atlases of different ``patch_scale`` are refused; of two measured sides the one measured
        on the smaller key is kept (each patch keeps the side it was cut at in ``where``)."""
        if (other.k, other.patch_px) != (self.k, self.patch_px):
            raise ValueError(f"cannot merge atlases of k={self.k}, {self.patch_px} px and "
                             f"k={other.k}, {other.patch_px} px")
        out = ChannelAtlas(self.k, self.patch_px, self.patch_scale,
                           _seen=self._seen | other._seen)
        out.sides, out.measured_on = _merged_sides(self, other)
        for layer in dict.fromkeys(list(self.layers) + list(other.layers)):
            a, b = self.layers.get(layer), other.layers.get(layer)
            if a is None or b is None:
                out.layers[layer] = a if b is None else b
                continue
            if a.channels != b.channels:
                raise ValueError(f"layer {layer}: {a.channels} channels here, {b.channels} there")
            chosen = _select(torch.cat([a.value, b.value], 1), torch.cat([a.key, b.key], 1),
                             self.k)
            out.layers[layer] = LayerAtlas(*(
                _gather(torch.cat([getattr(a, f), getattr(b, f)], 1), chosen, fill)
                for f, fill in (("value", float("-inf")), ("key", -1), ("where", 0),
                                ("patch", 0))))
        return out

    def absorb(self, other: "ChannelAtlas") -> None:
        """Merge ``other`` into this atlas in place (observers bound to it keep filling it)."""
        merged = self.merge(other)
        self.layers, self._seen = merged.layers, merged._seen
        self.sides, self.measured_on = merged.sides, merged.measured_on

    def to_tensors(self, prefix: str = "atlas/") -> dict[str, torch.Tensor]:
        """``{prefix}{field}/{layer}`` for value, key, where and patch, ``{prefix}side/{layer}``
        (strides, 0 while unmeasured), ``{prefix}patch_scale`` (0: measured) and
        ``{prefix}measured_on`` ((-1, -1): not yet): everything ``from_tensors`` needs (k and
        the patch size are the tensors' shapes); the same names in every process of a job."""
        scale = 0.0 if self.patch_scale is None else self.patch_scale
        out = {f"{prefix}patch_scale": torch.tensor([scale], dtype=torch.float64),
               f"{prefix}measured_on": torch.tensor(self.measured_on or (-1, -1))}
        for layer in dict.fromkeys(list(self.layers) + list(self.sides)):
            side = self.sides.get(layer, scale)
            out[f"{prefix}side/{layer}"] = torch.tensor([side], dtype=torch.float64)
        for layer, a in self.layers.items():
            for name in ("value", "key", "where", "patch"):
                out[f"{prefix}{name}/{layer}"] = getattr(a, name).contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "atlas/"
                     ) -> "ChannelAtlas":
        """The atlas stored by ``to_tensors`` (other keys of ``tensors`` are ignored)."""
        names = [k[len(prefix) + len("value/"):] for k in tensors
                 if k.startswith(f"{prefix}value/")]
        if not names:
            raise ValueError(f"no atlas tensors under {prefix!r}")
        layers = {}
        for layer in names:
            try:
                a = LayerAtlas(*(tensors[f"{prefix}{f}/{layer}"]
                                 for f in ("value", "key", "where", "patch")))
            except KeyError as e:
                raise ValueError(f"atlas layer {layer}: tensor {e} is missing") from None
            _check_layer(layer, a)
            layers[layer] = a
        first = next(iter(layers.values()))
        if any(a.value.shape[1] != first.value.shape[1]
               or a.patch.shape[2] != first.patch.shape[2] for a in layers.values()):
            raise ValueError("atlas layers differ in patches per channel or patch size")
        scale = tensors.get(f"{prefix}patch_scale")
        scale = LEGACY_SCALE if scale is None else float(scale[0])
        on = tensors.get(f"{prefix}measured_on")
        sides = {k[len(prefix) + len("side/"):]: float(t[0]) for k, t in tensors.items()
                 if k.startswith(f"{prefix}side/") and t[0] > 0}
        return cls(first.value.shape[1], first.patch.shape[2], scale or None, layers,
                   sides or ({l: scale for l in layers} if scale else {}),
                   tuple(on.tolist()) if on is not None and on[0] >= 0 else None)

    def observer(self, split: SplitModel | HookedModel, denormalize: Denormalize) -> Callable:
        """A ``UnitRunner`` prefix observer filling this atlas at ``split``'s layers; with
        ``patch_scale=None`` it first measures the layers' ERF on its first views (ERF_VIEWS
        of them, one forward and backward pass: ``experiments/atlas_rf`` says what it costs)."""
        def observe(keys, views, prefix_out) -> None:
            acts = {l: split.feature_maps(prefix_out, l) for l in split.layers}
            if self.patch_scale is None and not all(l in self.sides for l in split.layers):
                device = next(iter(acts.values())).device
                self.measure(split, keys, views[:ERF_VIEWS].to(device))
            self.observe(keys, views, acts, denormalize)
        return observe


def _merged_sides(a: ChannelAtlas, b: ChannelAtlas
                  ) -> tuple[dict[str, float], tuple[int, int] | None]:
    """The sides (and measured_on) of the merge of ``a`` and ``b`` (``ChannelAtlas.merge``)."""
    def cut(x: ChannelAtlas) -> str:
        return "the measured receptive field" if x.patch_scale is None else \
            f"{x.patch_scale:g} strides"
    if a.patch_scale != b.patch_scale:
        raise ValueError(f"cannot merge an atlas whose patches are cut to {cut(a)} with one cut "
                         f"to {cut(b)}: their patches show different areas; make both atlases "
                         "with the same patch_scale")
    if a.patch_scale is not None or b.measured_on is None:
        return {**b.sides, **a.sides}, a.measured_on
    if a.measured_on is None:
        return {**a.sides, **b.sides}, b.measured_on
    first, second = (a, b) if a.measured_on <= b.measured_on else (b, a)
    return {**second.sides, **first.sides}, first.measured_on


# -- reading the atlas with an importance ----------------------------------------------------------
class TopChannel(NamedTuple):
    channel: int
    weight: float
    se: float      # the weight's standard error (NaN where the file does not keep it)


def top_channels(importance: Importance, layer: str, cls: int, n: int = 5) -> list[TopChannel]:
    """(channel, weight, standard error) of the ``n`` channels of largest positive importance
    for class ``cls`` at ``layer``, largest first: the channels a (positive) CHIP map of the
    class is made of, with how sure the distillation is of each weight."""
    importance.check_channel_request(layer, cls, n)
    w = importance.weights[layer][cls].float()
    se = importance.standard_error(layer, cls)
    vals, idx = w.clamp(min=0).topk(min(n, w.numel()))
    return [TopChannel(int(i), float(v), float(se[i])) for i, v in zip(idx, vals) if v > 0]


def channel_maps(model: torch.nn.Module, layer: str, images: torch.Tensor,
                 channels: Sequence[int], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Where each of ``channels`` fires on each image: (B, len(channels), H, W), every map
    bilinearly upsampled and min-max normalised, from the same activations CHIP maps use; on
    the CPU, for pictures, wherever the model runs."""
    size = size or tuple(images.shape[-2:])
    images = images.to(next(model.parameters()).device)
    with torch.inference_mode():
        acts, _ = split_model(model, [layer]).forward(images)
        a = acts[layer][:, list(channels)].float()
        b, c = a.shape[:2]
        return upsample_normalize_reference(a.flatten(0, 1), size).view(b, c, *size).cpu()
