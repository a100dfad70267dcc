"""What several test folders share: where the real data of ../shared/data is, a tiny classifier,
a fake ImageNet train/ folder, the check of a command-line error, and layers' own outputs
(forward hooks) to compare a split model's activations with.

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


def write_folder(root, wnids=("n01440764", "n01443537"), per_class=2, size=40):
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for j in range(per_class):
            arr = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / w / f"{w}_{j}.JPEG")
    return root


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
