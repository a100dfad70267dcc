"""The setup shared by the jobs that time MobileNetV2 on the first classes of
imagenette/train against itself (``stage_cost``, ``chain_per_view``): their common options
and the model, photos and classes they name."""
from __future__ import annotations

import argparse
from pathlib import Path

import chip_fast

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def parser(doc: str, samples: int, repeats: int, name: str) -> argparse.ArgumentParser:
    """The options every such job has; ``name``: the default results name's description."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--samples", type=int, default=samples)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--control", default="none", help="the control variate of both sides")
    p.add_argument("--name", default=None, help=f"results name (default: {name})")
    p.add_argument("--data", type=Path, default=DATA / "imagenette" / "train")
    p.add_argument("--weights", type=Path, default=DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    return p


def job_inputs(args: argparse.Namespace):
    """(model, source, classes) of the parsed options."""
    model = chip_fast.load_model("mobilenet_v2", args.weights, "cpu")
    source = chip_fast.ImageFolderSource(args.data, preprocess=chip_fast.preprocess_of(model))
    return model, source, source.classes[:args.classes]
