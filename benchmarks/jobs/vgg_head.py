"""VGG16 conv5_3 on the head path against the elementwise path: time per perturbed network, and
the same importance.

    python -m benchmarks.jobs vgg_head [--classes 4] [--images 4] [--samples 512 2048]
                                       [--rounds 2] [--device cpu|cuda] [--name NAME]

The same distillation job (VGG16 with random weights, layer ``features.29`` = conv5_3 + ReLU,
zero fill, float32 tails on both sides) with ``tail_path="auto"`` (the head:
max-pool and average pool once per view, the 25088 x 4096 Linear as a 512 x 4096 product per
perturbed network, ``chip_fast.distill.linear_head``) and ``tail_path="elementwise"`` (every
perturbed network through the whole tail, as a plain loop would run it). Both are warmed up,
then run in alternation ``--rounds`` times at two sample counts; the time per perturbed network
is the slope of the units' time between the two counts (the prefix passes over the same views
cancel; the solve, whose iterations depend on the fit and not on the path, is not timed). The
two importances at the larger count are compared: the same masks give the same sums up to
float rounding. Writes benchmarks/results/vgg_head_<cpu|cuda>.json and .md.
"""
from __future__ import annotations

import argparse

import torch
import torchvision

import chip_fast
from chip_fast.distill.job import DistillJob
from chip_fast.distill.settings import DistillSettings

from benchmarks.jobs.record import write_result

LAYER = "features.29"


def run(model, data, samples: int, path: str, batch: int) -> tuple[float, DistillJob]:
    """Seconds of a job's units (decode, prefix, perturbed networks, sums), and the job."""
    job = DistillJob(model, data, [LAYER], DistillSettings(
        samples_per_class=samples, tail_path=path, tail_dtype="float32", batch_size=batch))
    job.measure_fill_statistics()
    job.run_pending(job.state.pending())
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return job.work_seconds, job


def agreement(a: chip_fast.Importance, b: chip_fast.Importance) -> dict:
    wa, wb = a.weights[LAYER][a.classes], b.weights[LAYER][b.classes]
    za, zb = a.sum_zy[LAYER], b.sum_zy[LAYER]
    rows = torch.stack([torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y in zip(wa, wb)])
    return {"max_abs_weight_diff_over_max_weight":
            float((wa - wb).abs().max() / wb.abs().max().clamp(min=1e-30)),
            "max_rel_sum_zy_diff": float(((za - zb).abs().max() / zb.abs().max())),
            "min_row_r": float(rows.min())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--images", type=int, default=4, help="images per class")
    p.add_argument("--samples", type=int, nargs=2, default=[512, 2048])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", help="results/<name>.json and .md (default vgg_head_<device>)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval().to(device)
    n = args.classes * args.images
    images = torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(n) % args.classes)
    for path in ("auto", "elementwise"):   # warm-up: allocations, kernels, thread pools
        run(model, data, 64, path, args.batch)
    times: dict[str, dict[int, list[float]]] = {p: {s: [] for s in args.samples}
                                                for p in ("auto", "elementwise")}
    last: dict[str, DistillJob] = {}
    for _ in range(args.rounds):
        for samples in args.samples:
            for path in ("auto", "elementwise"):
                seconds, job = run(model, data, samples, path, args.batch)
                times[path][samples].append(seconds)
                last[path] = job
    paths = {path: job.plan.paths[LAYER] for path, job in last.items()}
    final = {path: job.finish() for path, job in last.items()}
    lo, hi = args.samples
    per_network = {path: (min(t[hi]) - min(t[lo])) / ((hi - lo) * args.classes)
                   for path, t in times.items()}
    same = agreement(final["auto"], final["elementwise"])
    result = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads"),
        "model": "vgg16 (random weights)", "layer": LAYER,
        "paths": paths,
        "classes": args.classes, "images_per_class": args.images, "samples": args.samples,
        "batch_size": args.batch, "rounds": args.rounds, "wall_seconds": times,
        "us_per_network": {k: v * 1e6 for k, v in per_network.items()},
        "speedup": per_network["elementwise"] / per_network["auto"],
        "same_answer": same,
        "command": "python -m benchmarks.jobs vgg_head " + " ".join(argv or []),
    }
    md = (f"VGG16 `{LAYER}` (conv5_3 + ReLU), {result['device']}, float32 tails, batch "
          f"{args.batch}, {args.classes} classes x {args.images} images; time per perturbed "
          f"network = slope of the units' time between {lo} and {hi} samples per class, best of "
          f"{args.rounds}.\n\n"
          "| path | µs per perturbed network |\n|---|---|\n"
          f"| head (`tail_path=\"auto\"`: {result['paths']['auto']}) | "
          f"{result['us_per_network']['auto']:.0f} |\n"
          f"| elementwise (the whole tail per network) | "
          f"{result['us_per_network']['elementwise']:.0f} |\n\n"
          f"Speed-up {result['speedup']:.1f}x. Same answer: weights differ by at most "
          f"{same['max_abs_weight_diff_over_max_weight']:.1e} of the largest, the sums by "
          f"{same['max_rel_sum_zy_diff']:.1e}; lowest per-class r {same['min_row_r']:.6f}.\n")
    write_result(args.name or f"vgg_head_{device.type}", result, md)


if __name__ == "__main__":
    main()
