"""``chip-fast distill``'s options (``chip_fast.cli.distill``): the memory budget, the
distributed timeout, the checkpoint interval, until-stable and the tail and prefix dtypes, with their
defaults."""
from __future__ import annotations

from chip_fast.cli import build_parser


def test_cli_options():
    base = ["distill", "--arch", "resnet18", "--data", "d", "--out", "o"]
    args = build_parser().parse_args(base + ["--max-memory", "4GiB", "--dist-timeout", "30"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == ("4GiB", 30.0, 300.0)
    args = build_parser().parse_args(base + ["--checkpoint-every", "60"])
    assert (args.max_memory, args.dist_timeout, args.checkpoint_every) == (None, 600.0, 60.0)


def test_until_stable_reaches_the_library(tmp_path, monkeypatch):
    import chip_fast.cli.distill as cli
    import chip_fast.data.sources as sources
    import chip_fast.distill.run as run
    seen = {}
    monkeypatch.setattr(cli, "model_of", lambda args, device: "model")
    monkeypatch.setattr(sources, "as_source", lambda *a, **k: "data")
    monkeypatch.setattr(run, "distill_all_classes", lambda model, data, **kw: seen.update(kw))
    from chip_fast.cli import main
    assert main(["distill", "--arch", "resnet18", "--data", "d", "--out", str(tmp_path / "o"),
                 "--until-stable", "0.95", "--samples-per-class", "32768",
                 "--tail-dtype", "float32", "--prefix-dtype", "bfloat16"]) == 0
    assert (seen["until_stable"], seen["samples_per_class"], seen["tail_dtype"],
            seen["prefix_dtype"]) == (0.95, 32768, "float32", "bfloat16")
    args = build_parser().parse_args(["distill", "--arch", "resnet18", "--data", "d", "--out",
                                      "o"])
    assert (args.until_stable, args.tail_dtype, args.prefix_dtype) == (None, "auto", "auto")
