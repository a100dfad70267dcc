"""The command line, end to end on the real MobileNetV2 (skipped without ../shared/data)."""
import pytest

from chip_fast.cli import main, parse_classes
from conftest import WEIGHTS


def test_class_ranges():
    assert parse_classes("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert parse_classes(None) is None
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        parse_classes("5-2")


def test_distill_then_explain(mobilenet_v2, sample_train, tmp_path, capsys):
    out = tmp_path / "mnv2.chip"
    rc = main(["distill", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--data",
               str(sample_train), "--layers", "features.13", "--classes", "281,285",
               "--samples-per-class", "32", "--seed", "1", "--out", str(out), "--device", "cpu"])
    assert rc == 0 and out.is_file()
    photo = sample_train / "n02123045" / "n02123045_sample.JPEG"  # tabby cat, class 281
    rc = main(["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--importance",
               str(out), "--images", str(photo), "--classes", "281,285", "--out",
               str(tmp_path / "overlays"), "--device", "cpu"])
    assert rc == 0
    pngs = sorted(p.name for p in (tmp_path / "overlays").glob("*.png"))
    assert pngs == ["n02123045_sample_class281.png", "n02123045_sample_class285.png"]


def test_errors_are_reported_not_raised(mobilenet_v2, sample_train, tmp_path, capsys):
    rc = main(["distill", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--data",
               str(sample_train), "--layers", "features.99", "--out", str(tmp_path / "x.chip"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "no layer 'features.99'" in err and "features.18" in err
    rc = main(["distill", "--arch", "no_such_net", "--data", str(sample_train),
               "--out", str(tmp_path / "x.chip")])
    assert rc == 2 and "unknown --arch" in capsys.readouterr().err
