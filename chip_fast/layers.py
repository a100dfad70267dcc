"""Layers of a model: checking names, choosing the default layers, probing output sizes.

Owns what a layer name may be and which layers are the defaults; cutting the model and running
it at those layers is ``chip_fast.split``'s."""
from __future__ import annotations

import difflib
import logging
from typing import Sequence

import torch
from torch import nn

logger = logging.getLogger("chip_fast")


class LayerError(ValueError):
    """A layer name that the model does not have, or cannot be used."""


def check_layers(model: nn.Module, layers: Sequence[str], functions: Sequence[str] = ()
                 ) -> list[str]:
    """Return ``layers`` as a list after checking that each names a submodule of ``model`` or
    one of ``functions`` (fx node names of function calls, where the model is traced).

    A wrong name raises LayerError listing the closest and the valid names.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise LayerError("no layer given")
    names = [n for n, _ in model.named_modules() if n]
    known = set(names) | set(functions)
    for layer in layers:
        if layer not in known:
            close = difflib.get_close_matches(layer, names + list(functions), n=5, cutoff=0.5)
            shallow = [n for n in names if n.count(".") <= 1]
            hint = f" Closest: {', '.join(close)}." if close else ""
            calls = (f" Function calls (fx node names): {', '.join(functions)}." if functions
                     else "")
            raise LayerError(f"{type(model).__name__} has no layer {layer!r}.{hint} Valid names "
                             f"include: {', '.join(shallow)} (any name of model.named_modules())."
                             f"{calls}")
    if len(set(layers)) != len(layers):
        raise LayerError(f"a layer is given twice: {layers}")
    for a in layers:
        for b in layers:
            if a != b and b.startswith(a + "."):
                raise LayerError(f"layer {b!r} lies inside layer {a!r}: give one of them")
    return layers


# Deepest convolutional stage and one at twice its resolution, for common torchvision families.
# MobileNetV2's stage outputs at 14x14 are linear bottlenecks (no ReLU): a signed channel's value
# is not its presence. Measured (bench/results/mid_layers, positive weights, 150 photos), the
# ReLU6'd expansion that opens the next block, still 14x14, localises better alone (MaxBoxAcc
# 0.53 vs 0.51) and far better refined with features.18 (0.71 vs 0.51), so it is the mid layer.
_KNOWN_DEFAULTS = {
    "MobileNetV2": ["features.14.conv.0", "features.18"],
    "MobileNetV3": ["features.12", "features.16"],
    "ResNet": ["layer3", "layer4"],
    "VGG": None,  # computed: indices differ between VGG11..19
    "EfficientNet": ["features.5", "features.8"],
    "EfficientNetLite": ["features.5", "features.7"],
    "ConvNeXt": ["features.5", "features.7"],
    "RegNet": ["trunk_output.block3", "trunk_output.block4"],
    "DenseNet": ["features.denseblock3", "features.norm5"],
}


def default_layers(model: nn.Module, input_size: int = 224) -> list[str]:
    """The deepest convolutional stage and the deepest one at twice its resolution.

    Known torchvision families use a fixed table; other models are probed with one forward pass
    of a blank image, picking stage-level modules by their output resolution.
    """
    known = _KNOWN_DEFAULTS.get(type(model).__name__)
    names = {n for n, _ in model.named_modules()}
    if known and all(n in names for n in known):
        return list(known)
    return _probe_default_layers(model, input_size)


def probe_outputs(model: nn.Module, image_shape: Sequence[int] = (3, 224, 224)
                  ) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, output) of every named module that returns a tensor, in the order the
    modules finish, from one forward pass of a blank image; hooks are removed on exit."""
    outputs: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = []

    def record(name, module):
        def hook(_m, _i, out):
            if torch.is_tensor(out):
                outputs.append((name, module, out))  # tensors kept alive: ids get reused
        return hook

    try:
        for name, m in model.named_modules():
            if name:
                hooks.append(m.register_forward_hook(record(name, m)))
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _probe_default_layers(model: nn.Module, input_size: int) -> list[str]:
    pooling = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    outputs = [(name, isinstance(m, pooling), out)
               for name, m, out in probe_outputs(model, (3, input_size, input_size))
               if out.dim() == 4]
    # Group the modules that returned the same tensor (a block, its container, its last leaf).
    groups: list[tuple[torch.Tensor, list[str], bool]] = []
    for name, is_pool, out in outputs:
        for i, (t, names, pooled) in enumerate(groups):
            if t is out:
                groups[i] = (t, names + [name], pooled or is_pool)
                break
        else:
            groups.append((out, [name], is_pool))
    # Pooled maps are not feature maps of a stage; 1x1 maps have nothing to localise.
    groups = [(tuple(t.shape[-2:]), names) for t, names, pooled in groups
              if not pooled and t.shape[-2] * t.shape[-1] > 1]
    if not groups:
        raise LayerError(f"{type(model).__name__} has no 4-D feature maps: give layers= explicitly")

    def best_name(names):
        # The shortest name with two or more parts is the block (features.18), not the
        # container (features) nor a leaf inside the block (features.18.2).
        # Ties go to the last module to finish: an in-place ReLU after its convolution (VGG).
        staged = [n for n in names if "." in n] or names
        depth = min(n.count(".") for n in staged)
        return [n for n in staged if n.count(".") == depth][-1]

    def pick(hw):
        # The last block output at this resolution, among the shallowest names: a stage's
        # output rather than the first convolution of the next, strided, stage.
        names = [best_name(ns) for h, ns in groups if h == hw]
        depth = min(n.count(".") for n in names)
        return [n for n in names if n.count(".") == depth][-1]

    deep_hw = groups[-1][0]
    chosen = [pick(deep_hw)]
    double = (deep_hw[0] * 2, deep_hw[1] * 2)
    if any(h == double for h, _ in groups):
        chosen.insert(0, pick(double))
    return chosen
