"""What the stages of a distil-until-stable job cost: the same samples per class run as one
stage and as several (``until_stable`` too high for any class to stop), alternating in one
process after a warm-up, on MobileNetV2 and the first classes of imagenette/train; both sides
must give the same sample counts, and the ratio is the stages' price (the stop checks, and
whatever of a view the stages fail to keep: its prefix, baseline and slopes are kept).

    python -m benchmarks.jobs stage_cost [--classes 2] [--samples 8192] [--repeats 2]
                                         [--control view_slopes] [--name NAME]
"""
from __future__ import annotations

import time

import torch

import chip_fast

from .imagenette import job_inputs, parser
from .record import write_result



def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, 8192, 2, "stage_cost_<samples>").parse_args(argv)
    model, source, classes = job_inputs(args)

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
