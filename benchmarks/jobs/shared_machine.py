"""Distillation on a shared CPU: alone, and next to another job that keeps every CPU busy.

    python -m benchmarks.jobs shared_machine [--seconds 20] [--threads 0]

Runs the units of one distillation (MobileNetV2 features.14.conv.0, real Imagenette photos,
per-element path) for about --seconds and reports samples/s, first alone, then while a second
process runs float32 matrix products on as many threads as this process may use. With two
processes each sizing its threads from the CPUs it may use, the second should cost about half
the throughput, not more: a result much worse than 0.5 means oversubscription (threads that
wait on each other while descheduled). --threads sets torch's intra-op threads of the
distillation (0: chip_fast's choice, ``chip_fast.util.cpus.usable_cpus()``).
Writes benchmarks/results/shared_machine_cpu.json.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch

from benchmarks.jobs.record import RESULTS, write_result

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"


def _busy(threads: int, stop) -> None:
    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    while not stop.is_set():
        a @ a


def samples_per_second(seconds: float) -> float:
    import chip_fast
    from chip_fast.distill.job import DistillJob
    from chip_fast.models import load_model
    model = load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    source = chip_fast.ImageFolderSource(DATA / "imagenette" / "train")
    job = DistillJob(model, source, ["features.14.conv.0"],
                     chip_fast.DistillSettings(samples_per_class=4096, samples_per_unit=64,
                                               fill_stats_views=16), classes=source.classes[:1])
    job.measure_fill_statistics()
    done, t0 = 0, time.perf_counter()
    for unit in job.state.pending():
        job.run_pending([unit])
        done += job.plan.unit_samples(unit)
        if time.perf_counter() - t0 > seconds:
            break
    rate = done / (time.perf_counter() - t0)
    job.close()
    return rate


def main(argv: list[str] | None = None) -> None:
    from chip_fast.util.cpus import usable_cpus
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="folder of the result file")
    args = ap.parse_args(argv)
    cpus = usable_cpus()
    torch.set_num_threads(args.threads or cpus)
    alone = samples_per_second(args.seconds)
    stop = mp.get_context("spawn").Event()
    other = mp.get_context("spawn").Process(target=_busy, args=(cpus, stop))
    other.start()
    time.sleep(2.0)
    try:
        shared = samples_per_second(args.seconds)
    finally:
        stop.set()
        other.join()
    result = {"cpus": cpus, "torch_threads": torch.get_num_threads(),
              "alone_samples_per_s": alone, "shared_samples_per_s": shared,
              "ratio": shared / alone,
              "command": f"python -m benchmarks.jobs shared_machine --seconds {args.seconds:g}"}
    write_result("shared_machine_cpu", result, root=args.out)
