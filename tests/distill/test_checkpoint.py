"""Checkpoints of a distillation (``chip_fast.distill.checkpoint``): a job killed after some
units resumes to the identical result; a damaged checkpoint, one of another job, and a
checkpoint path that is a file are refused."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast.distill.run import distill_all_classes
from chip_fast.distill.runner import UnitRunner
from tests.distill.distributed_worker import LAYERS, SETTINGS, make_data, make_model


@pytest.mark.parametrize("control", ["none", "view_slopes"])
def test_killed_job_resumes_to_the_identical_result(tiny_net, tiny_data, tmp_path, monkeypatch,
                                                    control):
    kwargs = dict(layers=["features.1", "features.2"], samples_per_class=48, seed=2,
                  progress=False, samples_per_unit=16, classes_per_unit=2, control=control)
    whole = chip_fast.distill_all_classes(tiny_net, tiny_data, **kwargs)
    if control != "none":
        assert "view_slopes" in whole.settings["controls"].values()
    ckpt = tmp_path / "job.ckpt"
    real = UnitRunner.launch
    calls = {"n": 0}

    def dies_after_four(self, *args):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt("killed")
        return real(self, *args)

    monkeypatch.setattr(UnitRunner, "launch", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt, checkpoint_every=0, **kwargs)
    assert ckpt.exists()
    monkeypatch.setattr(UnitRunner, "launch", real)
    resumed = chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt, **kwargs)
    for layer in whole.layers:
        assert torch.equal(whole.weights[layer], resumed.weights[layer])
        assert torch.equal(whole.sum_zy[layer], resumed.sum_zy[layer])
    # A checkpoint of a different job is refused.
    with pytest.raises(ValueError, match="another job"):
        chip_fast.distill_all_classes(tiny_net, tiny_data, checkpoint=ckpt,
                                      **{**kwargs, "seed": 3})


def test_damaged_or_foreign_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "rank-1-of-2.ckpt").write_bytes(b"\x00garbage")
    kw = dict(out=tmp_path / "imp.safetensors", checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"rank-1-of-2.ckpt is damaged"):
        distill_all_classes(make_model(), make_data(), LAYERS, **kw, **SETTINGS)
    (ckpt / "rank-1-of-2.ckpt").unlink()
    distill_all_classes(make_model(), make_data(), LAYERS, **kw, **SETTINGS)
    with pytest.raises(ValueError, match="belongs to another job"):
        distill_all_classes(make_model(), make_data(), LAYERS, **kw, **{**SETTINGS, "seed": 4})
    (ckpt / "x").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        distill_all_classes(make_model(), make_data(), LAYERS,
                            **{**kw, "checkpoint": ckpt / "x"}, **SETTINGS)
