"""The search behind the imagenette defaults: distillations of MobileNetV2 at its default layers
on imagenette/train (300 photos per class) with one choice changed at a time, scored on the
*selection* half of val-dev only (even-indexed photos).

    python -m experiments.imagenette.search distill   # the runs below, cached in --work
    python -m experiments.imagenette.search score     # maps of every run and combination

Runs are cached as .chip files (with their wall time) in --work, so both stages can be stopped
and resumed; the time of the whole search is the sum of those times plus the scoring time,
written to experiments/imagenette/results/search/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from experiments.imagenette.common import (DEEP, MID, RESULTS, distill_cached, mobilenet_v2,
                                           photo_subset)

OUT = RESULTS / "search"

# name -> (photos per class or None for all 300, distill_all_classes settings)
RUNS: dict[str, tuple[int | None, dict]] = {
    "noise_logit_1024": (None, dict(fill="noise", response="logit", samples_per_class=1024)),
    "zero_logit_1024": (None, dict(fill="zero", response="logit", samples_per_class=1024)),
    "mean_logit_1024": (None, dict(fill="mean", response="logit", samples_per_class=1024)),
    "noise_logsoftmax_1024": (None, dict(fill="noise", response="log_softmax",
                                         samples_per_class=1024)),
    "noise_softmax_1024": (None, dict(fill="noise", response="softmax", samples_per_class=1024)),
    "noise_logit_1024_p32": (32, dict(fill="noise", response="logit", samples_per_class=1024)),
    "noise_logit_256": (None, dict(fill="noise", response="logit", samples_per_class=256)),
    "noise_logit_1024_seed1": (None, dict(fill="noise", response="logit", samples_per_class=1024,
                                          seed=1)),
    "noise_logit_4096": (None, dict(fill="noise", response="logit", samples_per_class=4096)),
    # second round, after zero fill won the first on the selection half
    "zero_logit_2048": (None, dict(fill="zero", response="logit", samples_per_class=2048)),
    "zero_logit_4096": (None, dict(fill="zero", response="logit", samples_per_class=4096)),
    "zero_logit_1024_seed1": (None, dict(fill="zero", response="logit", samples_per_class=1024,
                                         seed=1)),
    "zero_logit_1024_p32": (32, dict(fill="zero", response="logit", samples_per_class=1024)),
    "zero_logsoftmax_1024": (None, dict(fill="zero", response="log_softmax",
                                        samples_per_class=1024)),
    "zero_softmax_1024": (None, dict(fill="zero", response="softmax", samples_per_class=1024)),
    "zero_logit_256": (None, dict(fill="zero", response="logit", samples_per_class=256)),
    "zero_logit_1024_p4": (4, dict(fill="zero", response="logit", samples_per_class=1024)),
    "zero_logit_1024_p1": (1, dict(fill="zero", response="logit", samples_per_class=1024)),
}


def distill(work: Path, only: list[str] | None) -> None:
    model = mobilenet_v2()
    for name, (photos, settings) in RUNS.items():
        if only and name not in only:
            continue
        data = photo_subset(photos, work) if photos else None
        t0 = time.perf_counter()
        kw = {"data": data} if data else {}
        distill_cached(model, work / f"{name}.chip", layers=[MID, DEEP], **kw, **settings)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.search")
    ap.add_argument("stage", choices=["distill", "score"])
    ap.add_argument("--work", default="/tmp/chip_imagenette_search")
    ap.add_argument("--only", help="comma list of run names")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    only = args.only.split(",") if args.only else None
    if args.stage == "distill":
        distill(work, only)
    else:
        from experiments.imagenette.score import score
        score(work, OUT)


if __name__ == "__main__":
    main()
