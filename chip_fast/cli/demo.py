"""``chip-fast demo``: distil and explain real photos with a real network, offline."""
from __future__ import annotations

import argparse

from .args import Formatter


def configure(sub) -> None:
    m = sub.add_parser("demo", help="distil and explain real photos with a real network, offline",
                       formatter_class=Formatter)
    m.add_argument("--out", default="chip-demo", help="output folder for the report")
    m.add_argument("--samples-per-class", type=int,
                   help="default: the demo's own, which keeps the whole demo to seconds on 2 "
                        "CPU cores")
    m.add_argument("--seed", type=int, default=0, help="seed of the distillation")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    kwargs = {} if args.samples_per_class is None else {"samples_per_class": args.samples_per_class}
    report = run_demo(args.out, seed=args.seed, **kwargs)
    print(f"open {report}")
    return 0
