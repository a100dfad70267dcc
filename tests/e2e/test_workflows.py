"""Workflows of issue 10 on the command line and the API, with a tiny model: Ctrl-C without
--checkpoint saves and the rerun resumes to the same result, checkpoints go after success,
training images from CHIP_FAST_TRAIN_DIR, explain on a file that holds some classes."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

import chip_fast
import chip_fast.models.loading
from chip_fast.cli import main
from chip_fast.maps.explain import ClassNotDistilledError, explain_available
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


# --- explain on a file that holds some classes (API) ------------------------------------------

@pytest.fixture
def partial(tiny_net, tiny_data):
    """An importance of classes 0 and 1 only, and images with their top-1 classes."""
    imp = chip_fast.distill_all_classes(tiny_net, tiny_data, ["features.2"], classes=[0, 1],
                                        samples_per_class=16, progress=False)
    with torch.no_grad():
        logits = tiny_net(tiny_data[0])
    return imp, tiny_data[0], logits


def test_explain_checks_given_classes_before_any_forward(tiny_net, partial):
    imp, images, _ = partial
    calls = []
    hook = tiny_net.features.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="class 6 does not exist: the model has 6 classes"):
        chip_fast.explain(tiny_net, imp, images[:2], [0, 6])
    with pytest.raises(ClassNotDistilledError, match=r"image 1 -> class 4") as e:
        chip_fast.explain(tiny_net, imp, images[:2], [0, 4])
    hook.remove()
    assert e.value.rows == {1: 4} and "top-distilled" in str(e.value) and not calls


def test_explain_available_names_what_it_skipped(tiny_net, partial):
    imp, images, logits = partial
    top1 = logits.argmax(1)
    ex = explain_available(tiny_net, imp, images)
    assert ex.rows == [i for i, c in enumerate(top1.tolist()) if c in (0, 1)]
    assert set(ex.skipped) == set(range(len(images))) - set(ex.rows)
    assert all("is not distilled" in why for why in ex.skipped.values())
    assert ex.maps.shape == (len(ex.rows), 16, 16) and torch.equal(ex.classes, top1)
    if ex.skipped:   # the strict call refuses the same images, naming them
        with pytest.raises(ClassNotDistilledError, match="top-1 classes not distilled"):
            chip_fast.explain(tiny_net, imp, images)


def test_top_distilled_is_the_best_class_among_those_distilled(tiny_net, partial):
    imp, images, logits = partial
    best = torch.where(logits[:, 0] >= logits[:, 1], 0, 1)
    maps = chip_fast.explain(tiny_net, imp, images, "top-distilled")
    assert torch.equal(maps, chip_fast.explain(tiny_net, imp, images, best))
    with pytest.raises(ValueError, match="top-distilled"):
        chip_fast.explain(tiny_net, imp, images, "best")
