"""chip-fast distill against the plain PyTorch loop (plain_loop), each timed as a whole process
(start-up, loading, fill statistics and solve included), in one run, alternating.

    python -m benchmarks.jobs vs_plain_loop [--layer features.18] [--samples 4096] [--photos 16]
        [--repeats 2]

The data is a folder of symlinks to the first ``--photos`` photos (sorted names) of each class of
../shared/data/imagenette/train; the model MobileNetV2 with the real weights. Both runs use the
same photos, classes, layer and sample count. Writes
benchmarks/results/vs_plain_loop/<layer>_<samples>.json and .md with wall, user and system seconds
of each process, their ratio, and how well the two importance matrices agree (they use different
random numbers, so they agree within sampling error, not exactly).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.jobs.record import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
WEIGHTS = DATA / "weights" / "mobilenet_v2_imagenet1k.pth"


def photo_folder(dest: Path, per_class: int) -> Path:
    src = DATA / "imagenette" / "train"
    if not src.is_dir():
        raise SystemExit(f"{src} not found: this benchmark needs ../shared/data")
    for d in sorted(src.iterdir()):
        (dest / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per_class]:
            (dest / d.name / f.name).symlink_to(f.resolve())
    return dest


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # From the repository root, so that both "python -m" processes import this tree's chip_fast
    # and benchmarks, whatever chip_fast an environment has installed.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime}


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean over classes (rows) of the Pearson r of two weight matrices and of their top-10
    overlap."""
    corr = [float(torch.corrcoef(torch.stack([x, y]))[0, 1]) for x, y in zip(a, b)]
    top = [len(set(x.topk(10).indices.tolist()) & set(y.topk(10).indices.tolist())) / 10
           for x, y in zip(a, b)]
    return {"weight_correlation_mean": sum(corr) / len(corr),
            "top10_overlap_mean": sum(top) / len(top)}


def answers(chip_file: Path, plain_file: Path, plain_again: Path, layer: str) -> dict:
    """Whether both sides gave the same importance within sampling error: chip-fast against the
    plain loop, beside the plain loop against itself with another seed (its own sampling error).
    Agreeing with the plain loop at least as well as the plain loop agrees with itself (within
    0.05 of r: the yardstick is one pair of seeds) means the same answer; clearly less would
    mean another estimand."""
    import chip_fast
    plain = torch.load(plain_file, weights_only=True)
    chip = chip_fast.load_importance(chip_file).weights[layer][plain["classes"]].float()
    out = {"chip_vs_plain": agreement(chip, plain["weights"]),
           "plain_vs_plain_seed_1": agreement(torch.load(plain_again, weights_only=True)
                                              ["weights"], plain["weights"])}
    out["same_within_sampling_error"] = bool(
        out["chip_vs_plain"]["weight_correlation_mean"]
        >= out["plain_vs_plain_seed_1"]["weight_correlation_mean"] - 0.05)
    return out


def _agreement_md(agree: dict) -> str:
    cp, pp = agree["chip_vs_plain"], agree["plain_vs_plain_seed_1"]
    return (f"same importance within sampling error: **"
            f"{'yes' if agree['same_within_sampling_error'] else 'no'}** (mean r over classes "
            f"and top-10 overlap: chip-fast vs the plain loop {cp['weight_correlation_mean']:.3f}"
            f" / {cp['top10_overlap_mean']:.2f}; the plain loop vs itself with seed 1 "
            f"{pp['weight_correlation_mean']:.3f} / {pp['top10_overlap_mean']:.2f})\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="features.18")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "vs_plain_loop"))
    args = ap.parse_args(argv)
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = photo_folder(tmp / "train", args.photos)
        chip_out, plain_out = tmp / "chip.chip", tmp / "plain.pt"
        chip = [sys.executable, "-m", "chip_fast", "distill", "--arch", "mobilenet_v2",
                "--weights", str(WEIGHTS), "--data", str(data), "--layers", args.layer,
                "--samples-per-class", str(args.samples), "--device", "cpu",
                "--fill", "noise", "--baseline", "none",   # the plain loop's work, no more
                "--tail-dtype", "float32",   # the plain loop's dtype, on any CPU,
                "--prefix-dtype", "float32",  # in the prefix too (auto is bf16 where native)
                "--out", str(chip_out)]
        plain = [sys.executable, "-m", "benchmarks.jobs", "plain_loop", "--data", str(data),
                 "--layer", args.layer, "--samples", str(args.samples), "--out", str(plain_out)]
        runs: dict[str, list[dict[str, float]]] = {"chip_fast": [], "plain": []}
        for _ in range(args.repeats):
            for name, cmd in (("plain", plain), ("chip_fast", chip)):
                chip_out.unlink(missing_ok=True)
                runs[name].append(timed(cmd, env))
                print(name, runs[name][-1], flush=True)
        again = tmp / "plain_seed1.pt"   # the yardstick of sampling error, not timed
        subprocess.run(plain[:-1] + [str(again), "--seed", "1"], env=env, check=True,
                       capture_output=True, cwd=ROOT)
        agree = answers(chip_out, plain_out, again, args.layer)
    best = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
    result = {"layer": args.layer, "samples_per_class": args.samples, "classes": 10,
              "photos_per_class": args.photos, "cpu": platform.processor() or platform.machine(),
              "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__, "runs": runs,
              "best_wall_s": best, "speedup": best["plain"] / best["chip_fast"],
              "agreement": agree, "command": " ".join(["python -m benchmarks.jobs vs_plain_loop",
                                                        f"--layer {args.layer}",
                                                        f"--samples {args.samples}",
                                                        f"--photos {args.photos}"])}
    stem = f"{args.layer.replace('.', '_')}_{args.samples}"
    md = ("| process | best wall s | user s | sys s |\n|---|---|---|---|\n" + "".join(
        f"| {n} | {best[n]:.1f} | {min(r['user_s'] for r in rs):.1f} | "
        f"{min(r['sys_s'] for r in rs):.1f} |\n" for n, rs in runs.items()) +
        f"\nspeed-up of chip-fast over the plain loop: **{result['speedup']:.1f}x** "
        f"(MobileNetV2 {args.layer}, 10 classes x {args.samples} samples, {args.photos} photos "
        f"per class, {result['cpus']} CPUs)\n\n" + _agreement_md(agree) +
        f"\n`{result['command']}`\n")
    write_result(stem, result, md, root=args.out)
