"""Workflows on the command line and the API, with a tiny model: Ctrl-C without --checkpoint
saves and the rerun resumes to the same result, checkpoints go after success unless kept,
output files follow the umask, training images from CHIP_FAST_TRAIN_DIR."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

import chip_fast
import chip_fast.models.loading
from chip_fast.cli import main
from tests.helpers import TinyNet, write_folder

WNIDS = ("n01440764", "n01443537")   # ImageNet classes 0 and 1


@pytest.fixture
def tiny_cli(tmp_path, monkeypatch):
    """The CLI on a tiny model (any --arch loads it) and a two-class train/ folder."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    monkeypatch.setattr(chip_fast.models.loading, "load_model", lambda *a, **k: model)
    return model, write_folder(tmp_path / "train", WNIDS)


def distill_args(data, out, *extra):
    # 1024 samples per class: two units of 512, so a run can stop between them
    return ["distill", "--arch", "tiny", "--data", str(data), "--layers", "features.2",
            "--samples-per-class", "1024", "--seed", "3", "--out", str(out), *extra]


def test_ctrl_c_without_checkpoint_saves_and_the_same_command_resumes(tiny_cli, tmp_path,
                                                                      monkeypatch, capsys, caplog):
    from chip_fast.distill.checkpoint import CheckpointStore
    _, data = tiny_cli
    out, ckpt = tmp_path / "x.chip", tmp_path / "x.chip.ckpt"
    fired, save = [], CheckpointStore.save

    def save_then_ctrl_c(store, state):
        save(store, state)
        if not fired:   # Ctrl-C right after the first unit's checkpoint (--checkpoint-every 0)
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(CheckpointStore, "save", save_then_ctrl_c)
    rc = main(distill_args(data, out, "--checkpoint-every", "0"))
    monkeypatch.setattr(CheckpointStore, "save", save)
    err = capsys.readouterr().err
    assert fired and rc == 130, err
    assert f"the work done is saved in {ckpt}" in err and "interrupted" in err
    assert list(ckpt.glob("rank-*.ckpt")) and not out.exists()
    assert not (tmp_path / "x.chip.lock").exists()   # the lock went with the run

    with caplog.at_level(logging.WARNING, logger="chip_fast"):
        assert main(distill_args(data, out)) == 0
    assert "(1 of 2 units done)" in caplog.text        # resumed, not restarted
    assert out.is_file() and not ckpt.exists()          # checkpoint removed after success

    whole = tmp_path / "whole.chip"
    assert main(distill_args(data, whole)) == 0
    a, b = chip_fast.load_importance(out), chip_fast.load_importance(whole)
    assert torch.equal(a.weights["features.2"], b.weights["features.2"])


def test_keep_checkpoint_and_explicit_folder(tiny_cli, tmp_path):
    _, data = tiny_cli
    out, ckpt = tmp_path / "x.chip", tmp_path / "mine"
    ckpt.mkdir()
    (ckpt / "notes.txt").write_text("the user's file")
    assert main(distill_args(data, out, "--checkpoint", str(ckpt))) == 0
    # the checkpoint files are gone, the user's own file and so the folder stay
    assert sorted(p.name for p in ckpt.iterdir()) == ["notes.txt"]
    assert main(distill_args(data, out, "--keep-checkpoint")) == 0
    assert [p.name for p in (tmp_path / "x.chip.ckpt").iterdir()] == ["rank-0-of-1.ckpt"]


def test_output_files_follow_the_umask(tiny_cli, tmp_path):
    _, data = tiny_cli
    old = os.umask(0o027)
    try:
        assert main(distill_args(data, tmp_path / "x.chip")) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "x.chip").stat().st_mode & 0o777 == 0o640


def test_training_folder_from_the_environment(tiny_net, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CHIP_FAST_TRAIN_DIR", raising=False)
    with pytest.raises(ValueError, match="set the environment variable CHIP_FAST_TRAIN_DIR"):
        chip_fast.distill_all_classes(tiny_net, layers=["features.2"], progress=False)
    monkeypatch.setattr(chip_fast.models.loading, "load_model", lambda *a, **k: tiny_net)
    rc = main(["distill", "--arch", "tiny", "--out", str(tmp_path / "x.chip")])
    assert rc == 2 and "CHIP_FAST_TRAIN_DIR" in capsys.readouterr().err
    monkeypatch.setenv("CHIP_FAST_TRAIN_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="CHIP_FAST_TRAIN_DIR"):
        chip_fast.distill_all_classes(tiny_net, layers=["features.2"], progress=False)
    # wnid folders keep their ImageNet indices: n01443537 is class 1 whatever else is there
    monkeypatch.setenv("CHIP_FAST_TRAIN_DIR", str(write_folder(tmp_path / "train", WNIDS[1:])))
    imp = chip_fast.distill_all_classes(tiny_net, layers=["features.2"], samples_per_class=16,
                                        progress=False)
    assert imp.classes == [1]
