"""``chip-fast atlas`` errors as a user meets them (``chip_fast.cli.atlas``): a bad class list or
--top is one line and exit code 2 before any work; a photo that cannot be decoded is named and
skipped (or stops the run with ``--on-error raise``, as in distill and explain); a folder in
--images is read as explain reads it.

A tiny random-weight classifier with a distilled atlas stands in for a real model (the CLI's
model loading is replaced by it), so every test runs in about a second."""
from __future__ import annotations


import pytest
import torch

import chip_fast
import chip_fast.cli.atlas as atlas_cli
from chip_fast.cli import build_parser, main
from tests.helpers import TinyNet, cli_error, jpeg_bytes


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def atlas_file(tiny, tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 6)
    imp = chip_fast.distill_all_classes(tiny, data, ["features.2"], samples_per_class=16,
                                        atlas=2, progress=False)
    return str(imp.save(tmp_path_factory.mktemp("imp") / "tiny.chip"))


@pytest.fixture
def photos(tmp_path):
    """A folder with a good JPEG and a truncated one (the first half of a JPEG's bytes)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    good, bad = folder / "good.JPEG", folder / "bad.JPEG"
    good.write_bytes(jpeg_bytes())
    data = jpeg_bytes(1)
    bad.write_bytes(data[:len(data) // 2])
    return folder, good, bad


@pytest.fixture
def with_tiny_model(monkeypatch, tiny):
    monkeypatch.setattr(atlas_cli, "model_of", lambda args, device=None: tiny)


def atlas_args(atlas_file, out, *extra):
    return ["atlas", "--importance", atlas_file, "--out", str(out), *extra]


def test_a_bad_class_list_is_one_line_before_any_work(atlas_file, tmp_path, capsys):
    out = tmp_path / "out"
    err = cli_error(atlas_args(atlas_file, out, "--classes", "foo"), capsys)
    assert "--classes" in err and "bad class list 'foo'" in err and "e.g. 0-99,150" in err
    err = cli_error(atlas_args(atlas_file, out, "--classes", "5-2"), capsys)
    assert "bad class list '5-2'" in err and "a range goes up" in err
    assert not out.exists()


@pytest.mark.parametrize("top", ["-3", "0", "x"])
def test_top_below_one_is_refused_before_any_work(atlas_file, tmp_path, capsys, top):
    out = tmp_path / "out"
    err = cli_error(atlas_args(atlas_file, out, "--classes", "1", "--top", top), capsys)
    assert "argument --top" in err and top in err
    assert ("give 1 or more" if top != "x" else "not a whole number") in err
    assert not out.exists()            # no partial output folder


def test_a_truncated_photo_is_named_and_skipped(atlas_file, photos, tmp_path, capsys,
                                               with_tiny_model):
    _, good, bad = photos
    out = tmp_path / "out"
    rc = main(atlas_args(atlas_file, out, "--classes", "1", "--arch", "mobilenet_v2",
                         "--images", str(bad), str(good)))
    std = capsys.readouterr()
    assert rc == 0, std.err
    assert f"skipped: cannot decode image {bad}: image file is truncated" in std.err
    assert "Traceback" not in std.err and "1 image(s) skipped" in std.out
    page = (out / "atlas.html").read_text()
    assert "on good.JPEG" in page and "bad.JPEG" not in page


def test_on_error_raise_stops_at_the_named_file(atlas_file, photos, tmp_path, capsys,
                                                with_tiny_model):
    _, good, bad = photos
    out = tmp_path / "out"
    err = cli_error(atlas_args(atlas_file, out, "--classes", "1", "--arch", "mobilenet_v2",
                               "--on-error", "raise", "--images", str(bad), str(good)), capsys)
    assert f"cannot decode image {bad}: image file is truncated" in err
    assert not out.exists()


def test_no_decodable_photo_is_exit_code_1_and_nothing_written(atlas_file, photos, tmp_path,
                                                                capsys, with_tiny_model):
    _, _, bad = photos
    out = tmp_path / "out"
    rc = main(atlas_args(atlas_file, out, "--classes", "1", "--arch", "mobilenet_v2",
                         "--images", str(bad)))
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot decode image {bad}" in err and "nothing written" in err
    assert not out.exists()


def test_a_folder_of_photos_is_read_as_explain_reads_it(atlas_file, photos, tmp_path, capsys,
                                                       with_tiny_model):
    folder, _, bad = photos
    out = tmp_path / "out"
    rc = main(atlas_args(atlas_file, out, "--classes", "1", "--arch", "mobilenet_v2",
                         "--images", str(folder)))
    std = capsys.readouterr()
    assert rc == 0, std.err
    assert f"cannot decode image {bad}" in std.err and "Is a directory" not in std.err
    assert "on good.JPEG" in (out / "atlas.html").read_text()
    err = cli_error(atlas_args(atlas_file, out, "--classes", "1", "--arch", "mobilenet_v2",
                               "--images", str(tmp_path / "nowhere")), capsys)
    assert f"no image or folder {tmp_path / 'nowhere'}" in err


def test_on_error_is_the_option_of_distill_and_explain():
    def option(command):
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        return next(a for a in sub._actions if a.dest == "on_error")
    ours = option("atlas")
    for other in ("explain", "distill"):
        theirs = option(other)
        assert (ours.option_strings, ours.choices, ours.default, ours.help) == \
               (theirs.option_strings, theirs.choices, theirs.default, theirs.help), other
    assert ours.default == "skip"


def test_top_channels_refuses_fewer_than_one():
    from chip_fast.atlas.collect import top_channels
    imp = chip_fast.Importance(weights={"l": torch.ones(2, 4)}, classes=[0, 1], num_classes=2,
                               fingerprint={}, settings={})
    with pytest.raises(ValueError, match="n=-3: the number of channels to show must be 1 or more"):
        top_channels(imp, "l", 0, n=-3)
    assert len(top_channels(imp, "l", 0, n=1)) == 1
