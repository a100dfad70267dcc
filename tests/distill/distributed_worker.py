"""The process torchrun starts for ``tests/distill/test_distributed.py`` (``main``, run as a
script), and the tiny job it runs: model, data, layers and settings, defined once here and
imported by the distillation tests that compare with it.

Run as a script, this file imports only torch and chip_fast (not ``tests``: the worker's
``sys.path`` starts at this folder)."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from chip_fast.distill.run import distill_all_classes
from chip_fast.distill.runner import UnitRunner

LAYERS = ["features.3", "features.5"]
# 8 classes in groups of 2, 48 samples in blocks of 12: 4 groups x 4 blocks = 16 units.
SETTINGS = dict(samples_per_class=48, seed=3, classes_per_unit=2, samples_per_unit=12,
                batch_size=16, fill="noise",   # the fill statistics travel too
                atlas=2)                       # and the channel atlas is gathered
# Distil until stable: stages of 2,048 and 4,096 samples in blocks of 512 (4 groups x 8 blocks);
# at r 0.95 about half the classes stop after the first stage. With the view-slope control
# variate, whose sums travel with the group vectors and decide the stops.
UNTIL_STABLE = {**SETTINGS, "samples_per_class": 4096, "samples_per_unit": 512,
                "batch_size": 256, "until_stable": 0.95, "control": "view_slopes"}


class TinyNet(nn.Module):
    def __init__(self, classes: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def make_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 3, 12, 12, generator=g), torch.arange(8).repeat_interleave(3)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["chip_fast"])


# -- the worker torchrun starts -----------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--checkpoint-every", type=float, default=300)
    p.add_argument("--unit-sleep", type=float, default=0.0)
    p.add_argument("--die-rank", type=int, default=-1)
    p.add_argument("--die-after", type=int, default=0, help="units before the rank dies")
    p.add_argument("--seed-rank1", type=int, default=None, help="rank 1 uses another seed")
    p.add_argument("--until-stable", action="store_true", help="the UNTIL_STABLE job")
    a = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    run_unit = UnitRunner.launch
    calls = [0]

    def hooked(self, *args):
        if rank == a.die_rank and calls[0] >= a.die_after:
            os._exit(7)    # abrupt: no cleanup, no message, like a killed process
        calls[0] += 1
        time.sleep(a.unit_sleep)
        return run_unit(self, *args)
    UnitRunner.launch = hooked
    settings = dict(UNTIL_STABLE if a.until_stable else SETTINGS)
    if rank == 1 and a.seed_rank1 is not None:
        settings["seed"] = a.seed_rank1
    distill_all_classes(make_model(), make_data(), LAYERS, out=a.out, checkpoint=a.ckpt,
                        timeout=a.timeout, checkpoint_every=a.checkpoint_every, **settings)


if __name__ == "__main__":
    main()
