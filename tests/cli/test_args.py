"""What every subcommand shares (``chip_fast.cli.args``): class lists and ranges parsed or
refused with the reason, and every help showing its defaults."""
from __future__ import annotations

import pytest

from chip_fast.cli import main
from chip_fast.cli.args import parse_classes


def test_class_ranges():
    assert parse_classes("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert parse_classes("3,1-3") == [3, 1, 2]      # once each, in the order given
    assert parse_classes(None) is None
    # distill's list also takes the data's wnids and names, which the data resolves
    assert parse_classes("0-1,n01440764,black-and-tan coonhound,0", names=True) == [
        0, 1, "n01440764", "black-and-tan coonhound"]
    import argparse
    for text, why in (("5-2", "a range goes up, e.g. 2-5"), ("-3", "0 or more"),
                      ("1,x", "'x': use class indices and ranges")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse_classes(text)


def test_every_help_shows_its_defaults(capsys):
    for command, shown in (("distill", "(default: 8192)"), ("explain", "(default: chip-overlays)"),
                           ("evaluate", "(default: out/evaluate)"), ("demo", "(default: chip-demo)")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert shown in text and "(default: None)" not in text, command
