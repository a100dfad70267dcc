"""``chip-fast evaluate`` errors as a user meets them (``chip_fast.cli.evaluate``): every numeric
option is checked before the model loads (one line, exit code 2); a missing --val-dir says so;
a photo that cannot be decoded is named and skipped (or stops the run with ``--on-error
raise``, as in distill and explain); annotations without a photo and photos without an
annotation are counted and named in a warning.

A tiny random-weight classifier stands in for the model (the CLI's model loading is replaced by
it) on a folder of five small JPEGs, so every test runs in about a second."""
from __future__ import annotations

import json

import pytest
import torch

import chip_fast.cli.evaluate as evaluate_cli
from chip_fast.cli import main
from tests.helpers import TinyNet, cli_error, jpeg_bytes

WNIDS = [f"n0000000{i}" for i in range(6)]


@pytest.fixture
def val_dir(tmp_path):
    """images/im0..im2 (good), im3 (truncated: the first half of a JPEG's bytes), orphan (no
    annotation); the CSV has a row for each im and one for 'ghost', which has no photo."""
    root = tmp_path / "val"
    (root / "images").mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} class {i}\n" for i, w in enumerate(WNIDS)))
    rows = []
    for k in range(4):
        data = jpeg_bytes(k)
        (root / "images" / f"im{k}.JPEG").write_bytes(data if k < 3 else data[:len(data) // 2])
        rows.append(f"im{k},{WNIDS[k]} 2 2 30 30")
    rows.append(f"ghost,{WNIDS[0]} 1 1 5 5")
    (root / "images" / "orphan.JPEG").write_bytes(jpeg_bytes(9))
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n"
                                               + "\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_model(monkeypatch):
    torch.manual_seed(0)
    model = TinyNet().eval()
    monkeypatch.setattr(evaluate_cli, "model_of", lambda args, device=None: model)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(args, device=None):
        raise AssertionError("the model was loaded before the options were checked")
    monkeypatch.setattr(evaluate_cli, "model_of", refuse)


def evaluate_args(val, out, *extra):
    return ["evaluate", "--arch", "mobilenet_v2", "--device", "cpu", "--val-dir", str(val),
            "--methods", "cam", "--size", "32", "--faithfulness-limit", "0",
            "--sanity-limit", "0", "--no-plots", "--out", str(out), *extra]


@pytest.mark.parametrize("option,value,why", [
    ("--batch-size", "0", "0: give 1 or more"),
    ("--batch-size", "two", "'two' is not a whole number"),
    ("--threshold-step", "0", "more than 0 and at most 1"),
    ("--threshold-step", "1.5", "more than 0 and at most 1"),
    ("--threshold-step", "-0.1", "more than 0 and at most 1"),
    ("--limit", "0", "0: give 1 or more"),
    ("--limit", "-1", "-1: give 1 or more"),
    ("--steps", "0", "0: give 1 or more"),
    ("--size", "0", "0: give 1 or more"),
    ("--faithfulness-limit", "-1", "-1: give 0 or more"),
    ("--sanity-limit", "-5", "-5: give 0 or more"),
])
def test_numeric_options_are_checked_before_any_work(val_dir, tmp_path, capsys, no_model,
                                                     option, value, why):
    out = tmp_path / "out"
    err = cli_error(evaluate_args(val_dir, out, option, value), capsys)
    assert f"argument {option}: " in err and why in err and value in err
    assert not out.exists()


def test_a_missing_val_dir_says_the_folder_does_not_exist(tmp_path, capsys, no_model):
    err = cli_error(evaluate_args(tmp_path / "nowhere", tmp_path / "out"), capsys)
    assert f"--val-dir {tmp_path / 'nowhere'}: no such folder" in err
    assert "LOC_synset_mapping" not in err


def test_a_truncated_photo_is_named_and_skipped(val_dir, tmp_path, capsys, tiny_model):
    out = tmp_path / "out"
    with pytest.warns(UserWarning):   # the unpaired ghost and orphan: tested below
        rc = main(evaluate_args(val_dir, out, "--batch-size", "2", "--faithfulness-limit", "3",
                                "--steps", "2"))
    std = capsys.readouterr()
    bad = val_dir / "images" / "im3.JPEG"
    assert rc == 0, std.err
    assert f"[evaluate] skipped: cannot decode image {bad}: image file is truncated" in std.err
    assert "1 of 4 image(s) could not be decoded and were skipped" in std.err
    res = json.loads((out / "results.json").read_text())
    assert res["n_images"] == 3 and res["image_ids"] == ["im0", "im1", "im2"]
    assert res["faithfulness_images"] == 3     # the images scored, not the images read
    assert [s["image"] for s in res["skipped_images"]] == [str(bad)]
    assert "could not be decoded and were skipped: " + str(bad) in std.out   # the table's header
    assert "deletion_auc" in res["methods"]["cam@features.2"]


def test_on_error_raise_stops_at_the_named_file(val_dir, tmp_path, capsys, tiny_model):
    with pytest.warns(UserWarning):
        rc = main(evaluate_args(val_dir, tmp_path / "out", "--on-error", "raise"))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]   # after the run's first progress line
    assert rc == 2 and "Traceback" not in err, err
    assert last.startswith("chip-fast evaluate: error: cannot decode image "
                           f"{val_dir / 'images' / 'im3.JPEG'}: image file is truncated"), err
    assert not (tmp_path / "out" / "results.json").exists()


def test_unpaired_annotations_and_photos_are_counted_and_named(val_dir, tmp_path, capsys,
                                                              tiny_model):
    with pytest.warns(UserWarning) as caught:
        rc = main(evaluate_args(val_dir, tmp_path / "out", "--limit", "2"))
    assert rc == 0, capsys.readouterr().err
    said = [str(w.message) for w in caught]
    csv, images = val_dir / "LOC_val_solution.csv", val_dir / "images"
    assert f"1 of the 5 annotated images of {csv} are not in {images} and are left out: " \
           "ghost" in said
    assert f"1 of the 5 images in {images} have no annotation in {csv} and are left out: " \
           "orphan.JPEG" in said
    assert json.loads((tmp_path / "out" / "results.json").read_text())["n_images"] == 2
