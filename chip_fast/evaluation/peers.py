"""Maps of peer methods, each a function ``(model, images, classes) -> (B, H, W)`` numpy float32
in [0, 1] at the input size. The Grad-CAM family is computed by pytorch-grad-cam itself, so the
numbers are that library's, not a re-implementation's; so is its RefineCAM (the product of a
base method's per-layer maps). CAM reads its activation from
``chip_fast.models.split``, as CHIP does."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..ops.class_maps import upsample_normalize_reference
from ..models.row_chunks import model_rows
from ..models.split import split_model

MapFn = Callable[[torch.nn.Module, torch.Tensor, Sequence[int]], np.ndarray]

GRADCAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}


def _grad_cam_module():
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError("the Grad-CAM peers need pytorch-grad-cam: "
                          "pip install chip-fast[eval]") from None
    return pytorch_grad_cam


def module_by_name(model: torch.nn.Module, name: str) -> torch.nn.Module:
    mods = dict(model.named_modules())
    if name not in mods:
        raise KeyError(f"no module named {name!r} in {type(model).__name__}")
    return mods[name]


def name_of_module(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise KeyError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def peer_batch(model: torch.nn.Module, images: torch.Tensor, batch_size: int | None) -> int:
    """Images per call of a gradient method: ``batch_size``, or (None) on a CPU as many as keep
    every tensor of the model's forward and backward out of freshly faulted pages, as
    chip_fast's own CPU forward does (``chip_fast.models.row_chunks``; a whole batch of 32
    costs such a method several times its time per image), and 32 elsewhere."""
    if batch_size is not None:
        return batch_size
    return model_rows(model, images[:1]) or 32


def _labelled(fn: MapFn, method: str, layer: str) -> MapFn:
    fn.method, fn.layer = method, layer   # the runner reports these
    return fn


def grad_cam_family(method: str, layer: str, batch_size: int | None = None) -> MapFn:
    """pytorch-grad-cam's GradCAM / GradCAMPlusPlus / LayerCAM at the module named ``layer``,
    ``batch_size`` images per call (None: ``peer_batch``'s choice)."""
    cls_name = GRADCAM_METHODS.get(method.lower())
    if cls_name is None:
        raise ValueError(f"unknown Grad-CAM method {method!r}; one of {sorted(GRADCAM_METHODS)}")
    cam_cls = getattr(_grad_cam_module(), cls_name)

    def fn(model: torch.nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        out, n = [], peer_batch(model, images, batch_size)
        with cam_cls(model=model, target_layers=[module_by_name(model, layer)]) as cam:
            for lo in range(0, len(images), n):
                targets = [ClassifierOutputTarget(int(c)) for c in classes[lo:lo + n]]
                out.append(cam(input_tensor=images[lo:lo + n], targets=targets))
        return np.concatenate(out).astype(np.float32)

    return _labelled(fn, method.lower(), layer)


# pytorch-grad-cam's RefineCAM over a base method: the product of the base's per-layer maps
REFINED_PEERS = {"gradcam++-refined": "gradcam++", "layercam-refined": "layercam"}


def refine_cam(base: str, layers: Sequence[str], batch_size: int | None = None) -> MapFn:
    """pytorch-grad-cam's RefineCAM with ``base`` (``gradcam++`` or ``layercam``) at ``layers``:
    each layer's base CAM min-max normalised at the input size, multiplied, min-max normalised:
    the rule of Refined CHIP, so the two compare the maps and not the combination."""
    gc = _grad_cam_module()
    if not hasattr(gc, "RefineCAM"):
        raise ImportError("the RefineCAM peers need grad-cam >= 1.5.7: "
                          "pip install -U 'chip-fast[eval]'")
    base_cls = getattr(gc, GRADCAM_METHODS[base])
    if len(layers) < 2:
        raise ValueError(f"RefineCAM multiplies the maps of two or more layers; got {len(layers)}")

    def fn(model: torch.nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        cam = gc.RefineCAM(model, [module_by_name(model, l) for l in layers], base_method=base_cls)
        out, n = [], peer_batch(model, images, batch_size)
        try:
            for lo in range(0, len(images), n):
                targets = [ClassifierOutputTarget(int(c)) for c in classes[lo:lo + n]]
                out.append(cam(input_tensor=images[lo:lo + n], targets=targets))
        finally:
            # RefineCAM is no context manager: its per-layer CAMs' hooks would stay on the
            # model (and slow every later forward) until garbage collection
            for per_layer in cam.base_cam_per_layer:
                per_layer.activations_and_grads.release()
        return np.concatenate(out).astype(np.float32)

    return _labelled(fn, f"{base}-refined", "+".join(layers))


def find_gap_head(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """(name of the last conv stage, linear head) of a GAP + Linear classifier: torchvision
    MobileNet/EfficientNet/ConvNeXt-style ``features`` + ``classifier``, ResNet-style ``layer4`` + ``fc``."""
    if hasattr(model, "fc") and isinstance(model.fc, torch.nn.Linear) and hasattr(model, "layer4"):
        return "layer4", model.fc
    if hasattr(model, "features") and hasattr(model, "classifier"):
        head = model.classifier
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] \
            if isinstance(head, torch.nn.Module) else []
        if len(linears) == 1:
            return "features", linears[0]
    raise ValueError(f"CAM needs a model whose last conv features go through global average "
                     f"pooling into one Linear layer; {type(model).__name__} is not recognised")


def cam(layer: str | None = None, batch_size: int = 64) -> MapFn:
    """CAM (Zhou et al. 2016): the head's class row times the last conv features, no ReLU,
    bilinearly upsampled and min-max normalised. ``layer`` must be the module whose output feeds
    the pooling (for MobileNetV2 ``features`` or ``features.18``, the same tensor)."""

    def fn(model: torch.nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        stage, head = find_gap_head(model)
        name = layer or stage
        out = []
        split = split_model(model, [name])
        with torch.no_grad():
            for lo in range(0, len(images), batch_size):
                a = split.forward(images[lo:lo + batch_size])[0][name]
                if a.shape[1] != head.in_features:
                    raise ValueError(f"CAM at {layer!r}: {a.shape[1]} channels, but the head "
                                     f"takes {head.in_features}; CAM is only defined at the "
                                     f"layer feeding the global pooling ({stage!r})")
                w = head.weight[torch.as_tensor(list(classes[lo:lo + batch_size]))]
                m = torch.einsum("bk,bkhw->bhw", w.to(a.dtype), a).float()
                out.append(upsample_normalize_reference(m, tuple(images.shape[-2:])).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    return _labelled(fn, "cam", layer or "")


def peer(method: str, layer: str | Sequence[str]) -> MapFn:
    """A peer by name: ``cam``, ``gradcam``, ``gradcam++`` or ``layercam`` at ``layer``, or
    ``gradcam++-refined`` / ``layercam-refined`` (RefineCAM) at a list of layers."""
    if method.lower() in REFINED_PEERS:
        return refine_cam(REFINED_PEERS[method.lower()], [layer] if isinstance(layer, str)
                          else list(layer))
    if not isinstance(layer, str):
        raise ValueError(f"{method} maps one layer; got {list(layer)}")
    if method.lower() == "cam":
        return cam(layer)
    return grad_cam_family(method, layer)
