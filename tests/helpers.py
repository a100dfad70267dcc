"""What several test folders share: where the real data of ../shared/data is, a tiny classifier,
a fake ImageNet train/ folder, the check of a command-line error, and layers' own outputs
(forward hooks) to compare a split model's activations with, and miniature ViT and Swin
layouts.

Imported as ``tests.helpers`` (``tests`` is a package); ``conftest.py`` builds its fixtures on
it. Nothing here imports triton or chip_fast at import time: ``conftest.py`` imports this module
before any test module, and Triton's interpreter must be chosen before triton is imported."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet1k.pth"
SAMPLE_TRAIN = SHARED / "imagenet-sample" / "train"
VAL_DEV = SHARED / "imagenet-val-dev"


class TinyNet(nn.Module):
    """A small convolutional classifier with named stages, like torchvision's."""

    def __init__(self, classes: int = 6, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class TinyViT(nn.Module):
    """ViT's layout in miniature: a patch embedding (16 px -> a 4x4 grid), ``extra`` class and
    register tokens in front, a token-mixing layer, an MLP block with GELU, the head on the class
    token (or on the mean of the grid tokens)."""

    def __init__(self, classes: int = 4, dim: int = 8, extra: int = 1, pool: str = "token",
                 untraceable: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix_tokens = nn.Parameter(torch.randn(1, extra, dim))
        self.mix = nn.Linear(extra + 16, extra + 16)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.final = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.extra, self.pool, self.untraceable = extra, pool, untraceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.prefix_tokens.expand(x.shape[0], -1, -1), x], 1)
        if self.untraceable and x.sum() > -1e9:   # data-dependent: fx cannot trace it
            x = x * 1
        x = x + self.mix(x.transpose(1, 2)).transpose(1, 2)
        x = self.final(x + self.fc2(self.act(self.fc1(self.norm(x)))))
        return self.head(x[:, 0] if self.pool == "token" else x[:, self.extra:].mean(1))


class TinySwin(nn.Module):
    """Swin's layout in miniature: channels-last (N, H, W, C) maps, an MLP with GELU on them,
    a patch merging Linear to a 2x2 grid, the head on the mean of the grid."""

    def __init__(self, classes: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.merge = nn.Linear(4 * dim, 2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).permute(0, 2, 3, 1)
        x = x + self.fc2(self.act(self.fc1(self.norm(x))))
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        x = self.merge(x.reshape(n, h // 2, w // 2, 4 * c))
        return self.head(x.mean((1, 2)))


def write_folder(root, wnids=("n01440764", "n01443537"), per_class=2, size=40):
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for j in range(per_class):
            arr = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / w / f"{w}_{j}.JPEG")
    return root


def jpeg_bytes(seed: int = 0) -> bytes:
    """A small random JPEG's bytes (its first half makes a truncated one)."""
    import io
    buf = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "JPEG")
    return buf.getvalue()


def cli_error(argv, capsys) -> str:
    """Run the CLI; it must exit with 2 and one line on stderr, which is returned."""
    from chip_fast.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:   # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def own_outputs(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output as the module returned it (copied before anything else runs)."""
    seen = {}
    hooks = [model.get_submodule(l).register_forward_hook(
        lambda _m, _i, out, l=l: seen.__setitem__(l, out.clone())) for l in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen
