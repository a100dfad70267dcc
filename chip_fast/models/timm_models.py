"""timm models: ``timm:<name>`` loaded from the hub or from a checkpoint file, and the
preprocessing of any timm model object, read from its own data config.

timm is an optional dependency (``pip install 'chip-fast[timm]'``) and is imported only here,
inside functions: ``import chip_fast`` never needs it. Owns what a timm name may be, how its
weights are read, and how its data config becomes a ``Preprocess``; the generic state_dict
checks are ``chip_fast.models.checkpoints``'."""
from __future__ import annotations

import difflib
import math
from pathlib import Path

from torch import nn

from ..data.preprocess import INTERPOLATIONS, Preprocess
from .checkpoints import load_strict, read_state_dict

PREFIX = "timm:"
# timm's crop modes -> Preprocess modes ("border" pads, which Preprocess does not do).
_CROP_MODES = {"center": "center_crop", "squash": "squash"}


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ValueError("timm models need timm: pip install 'chip-fast[timm]' (or pip install "
                         "timm)") from e
    return timm


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` carries a timm data config (every model timm.create_model makes)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return isinstance(cfg, dict) and "mean" in cfg and "input_size" in cfg


def _check_name(timm, name: str) -> None:
    """A wrong architecture or pretrained tag is one line naming the closest valid names."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return   # resolved by timm from the hub or the folder
    arch, _, tag = name.partition(".")
    known = timm.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=8, cutoff=0.6)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ValueError(f"unknown timm model {arch!r} ({hint}timm.list_models() lists all "
                         f"{len(known)})")
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            raise ValueError(f"timm has no pretrained tag {name!r}; tags of {arch}: "
                             f"{', '.join(tags) or 'none'}")


def load_timm(name: str, weights: str | Path | None = None) -> nn.Module:
    """timm's ``name`` (an architecture, ``arch.tag``, or ``hf-hub:org/repo``): with timm's own
    pretrained loading from the hub when ``weights`` is None, else from the checkpoint file
    ``weights`` (a state_dict in .pth or .safetensors, as timm writes and reads them; a
    classifier with another number of classes than 1000 is read off the file)."""
    timm = _timm()
    _check_name(timm, name)
    if weights is None:
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as e:  # noqa: BLE001 - hub clients raise many kinds when offline
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ValueError(
                f"could not get timm's pretrained weights of {name} ({type(e).__name__}: "
                f"{first}); without internet, pass a timm checkpoint (.pth or .safetensors) "
                f"with --weights (weights= in Python): one saved with "
                f"torch.save(model.state_dict(), 'weights.pth') on a machine that has them, or "
                f"the model.safetensors of the model's hub page") from e
    path = Path(weights)
    from timm.models import load_state_dict
    state = read_state_dict(path, lambda p: load_state_dict(str(p), use_ema=True),
                            "a timm checkpoint (.pth or .safetensors holding a state_dict)")
    model = timm.create_model(name, pretrained=False,
                              num_classes=_classes_in(timm, name, state))
    return load_strict(model, state, path, f"timm's {name}")


def _classes_in(timm, name: str, state: dict) -> int:
    """The number of classes of the checkpoint's classifier (timm's config names its key),
    else the architecture's default."""
    try:
        heads = timm.models.get_pretrained_cfg_value(name, "classifier") or ()
        default = timm.models.get_pretrained_cfg_value(name, "num_classes") or 1000
    except Exception:  # noqa: BLE001 - hub names have no local config: timm's default then
        heads, default = (), 1000
    head = heads if isinstance(heads, str) else heads[0] if heads else None
    weight = state.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else int(default)


def timm_preprocess(model: nn.Module, **overrides) -> Preprocess:
    """The eval transform of a timm model's data config (``timm.data.resolve_data_config``):
    input size, crop fraction (the short side is resized to floor(size / crop_pct)), crop mode,
    interpolation, mean and std, as ``timm.data.create_transform`` builds it; ``overrides``
    change the geometry."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"{type(model).__name__} takes {h}x{w} inputs; chip_fast's "
                         "preprocessing makes square ones: pass preprocess= explicitly")
    mode = _CROP_MODES.get(cfg.get("crop_mode") or "center")
    if mode is None:
        raise ValueError(f"timm's crop_mode {cfg['crop_mode']!r} is not supported; use "
                         f"{', '.join(_CROP_MODES)} or pass preprocess= explicitly")
    interpolation = cfg.get("interpolation") or "bilinear"
    prep = Preprocess(size=h, resize=math.floor(h / (cfg.get("crop_pct") or 0.875)),
                      mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), mode=mode,
                      interpolation=interpolation if interpolation in INTERPOLATIONS
                      else "bilinear")
    return Preprocess(**{**prep.__dict__, **overrides})
