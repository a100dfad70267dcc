"""``chip-fast distill``'s options (``chip_fast.cli.distill``): the memory budget, the
distributed timeout and the checkpoint interval, with their defaults."""
from __future__ import annotations

from chip_fast.cli import build_parser


def test_cli_options():
    base = ["distill", "--arch", "resnet18", "--data", "d", "--out", "o"]
    args = build_parser().parse_args(base + ["--max-memory", "4GiB", "--dist-timeout", "30"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == ("4GiB", 30.0, 300.0)
    args = build_parser().parse_args(base + ["--checkpoint-every", "60"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == (None, 600.0, 60.0)
