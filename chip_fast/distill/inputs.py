"""What a job resolves once from the model and the data, before its plan.

The source (read with the model's own preprocessing, ``chip_fast.models.preprocess_of``), the
layers (the model's defaults when none are named), the model cut at them, its fingerprint, and
one view of the first class through it: the number of model outputs, each layer's channels and
spatial size, and each layer's tail path (affine where the tail is linear in the layer's spatial
mean; linear_head where it is per-channel ops and a Linear over the flattened maps and the fill
commutes with them; chain_per_view where it begins with per-channel ops that the zero fill
commutes with; else elementwise). Everything downstream (the plan, the runner, the result) reads these;
nothing is resolved twice."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..data.sources import DataLike, ImageFolderSource, TensorSource, as_source
from ..models.fingerprint import model_fingerprint
from ..models.layers import default_layers
from ..models.loading import preprocess_of
from ..models.split import SplitModel
from .settings import DistillSettings
from .chain_per_view import ChannelChain, chain_per_view
from .linear_head import LinearHead, linear_head
from .tails import AffineTail, TailRunner, affine_tail

logger = logging.getLogger("chip_fast")


@dataclass
class JobInputs:
    """The resolved model and data of one job."""
    source: ImageFolderSource | TensorSource
    classes: list[int]                         # the classes to distil, ascending
    image_shape: tuple[int, ...]               # one preprocessed image
    split: SplitModel
    fingerprint: dict[str, Any]
    num_classes: int
    channels: dict[str, int]
    elements: dict[str, int]                   # spatial elements per channel
    affine: dict[str, AffineTail] = field(default_factory=dict)   # layers on the affine path
    heads: dict[str, LinearHead] = field(default_factory=dict)    # layers on the head path
    chains: dict[str, ChannelChain] = field(default_factory=dict)  # chain_per_view layers
    tails: dict[str, TailRunner] = field(default_factory=dict)    # the others
    # layers whose tail is affine in the spatial mean, whichever path they take
    linear: set[str] = field(default_factory=set)

    @property
    def layers(self) -> list[str]:
        return list(self.split.layers)

    def estimators(self, settings: DistillSettings) -> dict[str, str]:
        """"exact" where the response is linear in the mask (an affine tail, the logit) and
        ``settings.estimator`` allows it, else "sampled": part of what a file means
        (settings["estimators"])."""
        exact = settings.estimator == "auto" and settings.response == "logit"
        return {l: "exact" if exact and l in self.affine else "sampled" for l in self.layers}

    def controls(self, settings: DistillSettings) -> dict[str, str]:
        """"view_slopes" where ``settings.control`` asks for it and the layer is sampled through
        a tail run on its perturbed activations that reads no other prefix value, else
        "none": part of what a file means (settings["controls"])."""
        estimators = self.estimators(settings)
        on = settings.control == "view_slopes"
        return {l: "view_slopes" if on and estimators[l] == "sampled" and l in self.tails
                and not self.split.tails[l].extras else "none" for l in self.layers}

    def nonlinear_sampled(self, settings: DistillSettings) -> bool:
        """Whether some layer is sampled through a response that is not linear in its mask
        (an elementwise tail, or an affine one read through softmax): where paired designs
        cancel something."""
        estimators = self.estimators(settings)
        return any(estimators[l] == "sampled" and not (l in self.linear
                                                        and settings.response == "logit")
                   for l in self.layers)

    @property
    def paths(self) -> dict[str, str]:
        """"affine", "linear_head", "chain_per_view" or "elementwise" per layer: part of
        what a file means (settings["paths"])."""
        return {l: "affine" if l in self.affine else "linear_head" if l in self.heads
                else "chain_per_view" if l in self.chains else "elementwise"
                for l in self.layers}


def resolve_inputs(model: nn.Module, data: DataLike, layers: Sequence[str] | None,
                   classes: Iterable[int | str] | None, settings: DistillSettings,
                   device: torch.device) -> JobInputs:
    """Resolve ``data``, ``layers`` and ``classes`` for ``model`` (on ``device``, in eval mode)
    once. The probe runs the first image of the first class; a model whose output is not
    (batch, classes), or not finite on it, is refused here."""
    source = as_source(data, preprocess=preprocess_of(model))
    classes = select_classes(source.classes, classes, getattr(source, "class_ids", None),
                             getattr(source, "class_names", None))
    c = classes[0]
    image = source.load(c, 0)   # view 0 of a class is its first image itself
    if layers is None:
        # at the images' own size: a transformer takes no other, and its grid depends on it
        layers = default_layers(model, int(image.shape[-1]) if image.dim() == 3 else 224)
        logger.warning("chip_fast: layers=None, distilling the default layers %s", layers)
    split = SplitModel(model, layers)
    x = image[None].to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = split.run_prefix(x)
        acts = {l: split.activation(out, l) for l in split.layers}
        logits = split.logits(out)
        _check_logits(logits, c)
        inputs = JobInputs(source, classes, tuple(image.shape), split, model_fingerprint(model),
                           logits.shape[1],
                           {l: a.shape[1] for l, a in acts.items()},
                           {l: a[0, 0].numel() for l, a in acts.items()})
        for l, a in acts.items():
            tail = affine_tail(split, l, a)
            if tail is not None:
                inputs.linear.add(l)
            if tail is not None and settings.tail_path == "auto":
                inputs.affine[l] = tail
                continue
            # noise is drawn per element: it does not commute with the per-channel ops
            head = (linear_head(split, l, a) if settings.tail_path == "auto"
                    and settings.fill in ("zero", "mean") else None)
            if head is not None:
                inputs.heads[l] = head
                inputs.elements[l] = head.weight.shape[2]   # a view keeps (K, P) maps
                continue
            dtype = torch.bfloat16 if settings.tail_dtype == "bfloat16" else a.dtype
            chain = (chain_per_view(split, l, a, settings.fill)
                     if settings.tail_path == "auto" else None)
            if chain is not None:
                inputs.chains[l] = chain
                inputs.elements[l] = chain.maps(a[:1])[0, 0].numel()   # a view keeps its maps
            inputs.tails[l] = TailRunner(split, l, device, dtype,
                                         tail=chain.rest if chain is not None else None)
    return inputs


def _check_logits(logits: torch.Tensor, c: int) -> None:
    if logits.dim() != 2:
        raise ValueError(f"the model returns shape {tuple(logits.shape)}, not (batch, classes)")
    if not torch.isfinite(logits).all():
        raise FloatingPointError("the model returns NaN or Inf logits on a distillation image of "
                                 f"class {c}: check its weights and the preprocessing")


def select_classes(available: Sequence[int], wanted: Iterable[int | str] | None,
                   ids: Sequence[str] | None = None,
                   names: Sequence[str] | None = None) -> list[int]:
    """The classes to distil: all of ``available`` or the requested ones, sorted. A requested
    class is an index, or a folder's wnid (``ids``) or class name (``names``, either case) of
    the source; a class without images, or a name the source does not know, is refused."""
    if wanted is None:
        classes = list(available)
    else:
        classes = class_indices(wanted, ids, names)
        table = len(ids or names or ())
        beyond = [c for c in classes if table and not 0 <= c < table]
        if beyond:
            raise ValueError(f"class {', '.join(map(str, beyond[:10]))} does not exist: the "
                             f"data's class table has {table} classes (0-{table - 1})")
        have = set(available)
        missing = [c for c in classes if c not in have]
        if missing:
            raise ValueError(f"classes {missing[:20]} have no images in the data "
                             f"({len(available)} classes have images, e.g. "
                             f"{_examples(available, ids)})")
    if not classes:
        raise ValueError("no class to distill")
    return classes


def class_indices(wanted: Iterable[int | str] | int | str, ids: Sequence[str] | None = None,
                  names: Sequence[str] | None = None) -> list[int]:
    """Requested classes as sorted indices: each an index, or a wnid (``ids``) or class name
    (``names``, either case); a name neither table knows is a ValueError showing examples."""
    if isinstance(wanted, (str, int)):
        wanted = [wanted]
    tables = [_by_name(t) for t in (ids, names) if t]
    return sorted({_class_index(c, tables, ids or names) for c in wanted})


def _by_name(table: Sequence[str]) -> dict[str, list[int]]:
    """Each name of ``table`` (case-folded) -> the indices that carry it."""
    out: dict[str, list[int]] = {}
    for i, n in enumerate(table):
        out.setdefault(str(n).casefold(), []).append(i)
    return out


def _class_index(c: int | str, tables: list[dict[str, list[int]]],
                 shown: Sequence[str] | None) -> int:
    if isinstance(c, bool) or not isinstance(c, (int, str)) and not hasattr(c, "__index__"):
        raise TypeError(f"a class is an index, a wnid or a class name, not {c!r}")
    if not isinstance(c, str) or c.strip().isdigit():
        return int(c)
    for table in tables:
        hits = table.get(c.strip().casefold(), [])
        if len(hits) > 1:
            raise ValueError(f"class {c!r} names classes {hits}: give the index or the wnid")
        if hits:
            return hits[0]
    known = ", ".join(repr(n) for n in (shown or [])[:5])
    raise ValueError(f"class {c!r} is neither an index nor a wnid or name of the data's classes"
                     + (f" (they are named like {known})" if known else
                        " (this data names no classes: give indices)"))


def _examples(available: Sequence[int], ids: Sequence[str] | None) -> str:
    shown = list(available)[:5]
    if ids:
        return ", ".join(f"{c} ({ids[c]})" if 0 <= c < len(ids) else str(c) for c in shown)
    return ", ".join(map(str, shown))
