"""The chain_per_view path against the elementwise path it replaces, as whole jobs: MobileNetV2
at features.14.conv.0 alone (so nothing else changes with the path), the first classes of
imagenette/train, the same seed on both sides, alternating in one process after a warm-up
(which side goes first alternates too). Both sides should give the same importance (the same
masks; without the control variate only the tails' bf16 rounding differs, with it the slopes'
linearisation point too): the median over classes of the Pearson r between their W rows and
their top-10 overlap are recorded with the times.

    python -m benchmarks.jobs chain_per_view [--classes 2] [--samples 4096] [--repeats 3]
                                             [--control view_slopes] [--name NAME]
"""
from __future__ import annotations

import resource
import time
from statistics import median

import torch

import chip_fast

from .imagenette import job_inputs, parser
from .record import write_result
from .stability import agreement

LAYER = "features.14.conv.0"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, 4096, 3, "chain_per_view_<samples>").parse_args(argv)
    model, source, classes = job_inputs(args)

    def timed(path: str, n: int, seed: int):
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        imp = chip_fast.distill_all_classes(model, source, [LAYER], classes=classes,
                                            samples_per_class=n, progress=False, seed=seed,
                                            tail_path=path, control=args.control)
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
        return wall, cpu, imp

    timed("auto", 512, 0)   # warm-up: file cache, thread pools
    rows = []
    for r in range(args.repeats):
        order = ("auto", "elementwise") if r % 2 == 0 else ("elementwise", "auto")
        got = {path: timed(path, args.samples, r) for path in order}
        (cw, cc, chain), (ew, ec, plain) = got["auto"], got["elementwise"]
        if chain.settings["paths"][LAYER] != "chain_per_view":
            raise SystemExit(f"{LAYER} took the {chain.settings['paths'][LAYER]} path")
        same = agreement(chain.weights[LAYER], plain.weights[LAYER], chain.classes)
        rows.append({"chain_s": cw, "elementwise_s": ew, "chain_cpu_s": cc,
                     "elementwise_cpu_s": ec, "speedup": ew / cw, "cpu_speedup": ec / cc,
                     "same_seed": same, "first": order[0]})
        print(rows[-1], flush=True)
    result = {"classes": args.classes, "samples_per_class": args.samples, "layer": LAYER,
              "control": args.control, "threads": torch.get_num_threads(),
              "median_speedup": median(r["speedup"] for r in rows),
              "median_cpu_speedup": median(r["cpu_speedup"] for r in rows), "rows": rows}
    md = ("| chain_per_view (s) | elementwise (s) | speed-up wall / CPU | same seed r / top-10 |\n"
          "|---|---|---|---|\n" +
          "".join(f"| {r['chain_s']:.1f} | {r['elementwise_s']:.1f} | {r['speedup']:.2f} / "
                  f"{r['cpu_speedup']:.2f} | {r['same_seed']['median_r']:.4f} / {r['same_seed']['top10']:.2f} |\n" for r in rows) +
          f"\nmedian speed-up: {result['median_speedup']:.2f} wall, "
          f"{result['median_cpu_speedup']:.2f} CPU ({args.control} control)\n")
    write_result(args.name or f"chain_per_view_{args.samples}", result, md)


if __name__ == "__main__":
    main()
