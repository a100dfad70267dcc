"""What the stages of a distil-until-stable job cost: the same samples per class run as one
stage and as several (``until_stable`` too high for any class to stop), alternating in one
process after a warm-up, on MobileNetV2 and the first classes of imagenette/train; both sides
must give the same sample counts, and the ratio is the stages' price (the stop checks, and
whatever of a view the stages fail to keep: its prefix, baseline and slopes are kept).

    python -m benchmarks.jobs stage_cost [--classes 2] [--samples 8192] [--repeats 2]
                                         [--control view_slopes] [--name NAME]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import chip_fast

from .record import write_result

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--control", default="none", help="the control variate of both sides")
    p.add_argument("--name", default=None, help="results name (default: stage_cost_<samples>)")
    p.add_argument("--data", type=Path, default=DATA / "imagenette" / "train")
    p.add_argument("--weights", type=Path, default=DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    args = p.parse_args(argv)
    model = chip_fast.load_model("mobilenet_v2", args.weights, "cpu")
    source = chip_fast.ImageFolderSource(args.data, preprocess=chip_fast.preprocess_of(model))
    classes = source.classes[:args.classes]

    def timed(n: int, **kw) -> tuple[float, list[int]]:
        start = time.perf_counter()
        imp = chip_fast.distill_all_classes(model, source, None, classes=classes,
                                            samples_per_class=n, progress=False,
                                            control=args.control, **kw)
        reached = imp.settings.get("samples_reached", [n] * len(classes))
        return time.perf_counter() - start, reached

    timed(512)   # warm-up: file cache, thread pools
    rows = []
    for _ in range(args.repeats):
        one, n_one = timed(args.samples)
        staged, n_staged = timed(args.samples, until_stable=0.999999)
        if n_one != n_staged:
            raise SystemExit(f"the staged run stopped classes early ({n_staged}): raise the target")
        rows.append({"one_stage_s": one, "stages_s": staged, "ratio": staged / one})
        print(rows[-1], flush=True)
    from chip_fast.distill.plan import stage_ends
    result = {"classes": args.classes, "samples_per_class": args.samples,
              "stages": list(stage_ends(args.samples, 0.95, 4)), "threads": torch.get_num_threads(),
              "control": args.control,
              "rows": rows}
    md = ("| one stage (s) | stages (s) | ratio |\n|---|---|---|\n" +
          "".join(f"| {r['one_stage_s']:.1f} | {r['stages_s']:.1f} | {r['ratio']:.2f} |\n"
                  for r in rows))
    write_result(args.name or f"stage_cost_{args.samples}", result, md)


if __name__ == "__main__":
    main()
