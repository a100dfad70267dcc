"""Where distillation time goes: tail forwards vs perturbation, statistics and solve.

    python -m benchmarks.jobs distill_breakdown [--classes 100] [--samples 512]
        [--layer features.16]

Runs a real distillation of MobileNetV2 (the real weights of ../shared/data when present; the
timing does not depend on them) with every stage timed in place, and writes the table as JSON
and Markdown into benchmarks/results/ (distill_breakdown_<cpu|cuda>). The brief's bar:
perturbation + statistics + solve under half of the tail forwards' time on a 2-core CPU, under
10% on an H100/H200.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
import torchvision

import chip_fast
import chip_fast.solve.fit as fit_mod
import chip_fast.solve.stats as stats_mod
import chip_fast.distill.runner as runner_mod
from chip_fast.distill.settings import resolve_settings
from chip_fast.models.split import SplitModel

from benchmarks.jobs.record import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / ".." / "shared" / "data" / "weights" / "mobilenet_v2_imagenet1k.pth"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


@contextlib.contextmanager
def timed_stages(device: torch.device):
    """Wrap the stage functions the job calls so each call's time is added to its stage."""
    totals: dict[str, float] = defaultdict(float)

    def wrap(owner, name, stage):
        real = getattr(owner, name)

        def timed(*a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = real(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals[stage] += time.perf_counter() - t0
            return out
        setattr(owner, name, timed)
        return owner, name, real

    patches = [wrap(runner_mod, "perturb", "perturbation"),
               wrap(runner_mod, "response_sums", "statistics"),
               wrap(fit_mod, "solve_lasso", "solve"),
               wrap(stats_mod, "mask_moments_of", "statistics"),
               wrap(SplitModel, "run_tail", "tail forward"),
               wrap(SplitModel, "run_prefix", "prefix forward")]
    try:
        yield totals
    finally:
        for owner, name, real in patches:
            setattr(owner, name, real)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--layer", default="features.16")
    ap.add_argument("--batch-size", type=int, help="default: the library's (64 on CPU, 256 on GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(RESULTS), help="folder of the result files")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model = torchvision.models.mobilenet_v2()
    if WEIGHTS.is_file():
        model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model = model.eval().to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.classes, 3, 224, 224, generator=g)
    labels = torch.arange(args.classes)
    with timed_stages(device) as totals:
        t0 = time.perf_counter()
        chip_fast.distill_all_classes(model, (images, labels), [args.layer],
                                      samples_per_class=args.samples, augment=2,
                                      batch_size=args.batch_size, progress=False)
        wall = time.perf_counter() - t0
    batch = args.batch_size or resolve_settings(chip_fast.DistillSettings(), device).batch_size
    samples = args.classes * args.samples
    overhead = totals["perturbation"] + totals["statistics"] + totals["solve"]
    result = {
        "device": device_name(device), "torch": torch.__version__,
        "model": "mobilenet_v2", "layer": args.layer, "classes": args.classes,
        "samples_per_class": args.samples, "batch_size": batch,
        "wall_s": wall, "samples_per_s": samples / wall,
        "stages_s": dict(totals),
        "overhead_over_tail": overhead / totals["tail forward"],
    }
    tag = "cuda" if device.type == "cuda" else "cpu"
    lines = [f"# Distillation time breakdown ({result['device']}, torch {torch.__version__})", "",
             f"MobileNetV2 @ {args.layer}, {args.classes} classes x {args.samples} samples "
             f"= {samples} perturbed networks, batch {batch}.", "",
             "| stage | seconds | share of tail forward |", "|---|---|---|"]
    for stage, s in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {stage} | {s:.2f} | {s / totals['tail forward']:.1%} |")
    lines += [f"| **perturbation + statistics + solve** | {overhead:.2f} | "
              f"**{result['overhead_over_tail']:.1%}** |",
              f"| whole job (wall) | {wall:.2f} | {samples / wall:.0f} samples/s |"]
    write_result(f"distill_breakdown_{tag}", result, "\n".join(lines) + "\n", root=args.out)
