"""``chip-fast evaluate`` as a user meets it, on the real MobileNetV2 and val photos (skipped
without ../shared/data): a run with CHIP, Refined CHIP and CAM writes its results, what CHIP
cannot run is refused before any peer runs, Refined CHIP is among the default methods, and
every batch reports progress on stderr.

The importance is a stand-in (no distillation): at features.18 the head's weight magnitudes, at
features.17 random positive weights, for the classes of the first two val photos only (one run
uses the head's weight magnitudes for every class instead)."""
from __future__ import annotations

import json
import time

import pytest
import torch

import chip_fast
from chip_fast.cli import main
from chip_fast.models.fingerprint import model_fingerprint
from tests.evaluation.helpers import toy_importance
from tests.helpers import SHARED as DATA, VAL_DEV, WEIGHTS

FIRST_TWO = [625, 705]   # classes of the first two photos of imagenet-val-dev; the next: 480, 282


@pytest.fixture(scope="module")
def two_class_file(mobilenet_v2, tmp_path_factory):
    if not VAL_DEV.is_dir():
        pytest.skip(f"val photos not found at {VAL_DEV}")
    head = mobilenet_v2.classifier[1].weight.detach().abs()
    mask = torch.zeros(1000, 1)
    mask[FIRST_TWO] = 1
    weights = {"features.17": torch.rand(1000, 320, generator=torch.Generator().manual_seed(0)),
               "features.18": head}
    imp = chip_fast.Importance(weights={k: w * mask for k, w in weights.items()},
                               classes=FIRST_TWO, num_classes=1000,
                               fingerprint=model_fingerprint(mobilenet_v2), settings={})
    return imp.save(tmp_path_factory.mktemp("imp") / "two.chip")


def evaluate_args(tmp_path, *extra):
    return ["evaluate", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--val-dir", str(VAL_DEV), "--device", "cpu",
            "--faithfulness-limit", "0", "--sanity-limit", "0", "--no-plots",
            "--out", str(tmp_path / "out"), *extra]


def test_undistilled_classes_fail_before_any_peer_runs(two_class_file, tmp_path, capsys):
    t0 = time.monotonic()
    rc = main(evaluate_args(tmp_path, "--importance", str(two_class_file), "--limit", "4"))
    err = capsys.readouterr().err
    assert rc == 2 and time.monotonic() - t0 < 30
    assert "2 of 4 images show classes that" in err and "ILSVRC2012_val_00000580 (class 480" in err
    assert "--only-distilled" in err and "[evaluate] [" not in err   # no batch was scored
    assert not (tmp_path / "out" / "results.json").exists()


def test_only_distilled_scores_every_method_on_the_same_images(two_class_file, tmp_path, capsys):
    rc = main(evaluate_args(tmp_path, "--importance", str(two_class_file), "--limit", "4",
                            "--only-distilled", "--layers", "features.18", "--batch-size", "1"))
    std = capsys.readouterr()
    assert rc == 0, std.err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["n_images"] == 2
    # the default methods: Refined CHIP (the headline) first, then CHIP and the peers
    assert list(res["methods"]) == ["chip-refined", "chip@features.18", "gradcam@features.18",
                                    "gradcam++@features.18", "layercam@features.18",
                                    "cam@features.18"]
    assert res["methods"]["chip-refined"]["layer"] == "features.17+features.18"
    assert "every method is scored on the 2 of 4 images" in std.err
    assert "[evaluate] [1/2 images" in std.err and "ETA" in std.err and "batch 2/2" in std.err
    assert "[evaluate] batch 1/2: chip-refined scored in" in std.err   # per method, at first
    assert "| chip-refined |" in std.out


def test_bad_method_requests_are_one_line(two_class_file, tmp_path, capsys):
    cases = {
        "unknown method(s) gradcam3": ["--methods", "gradcam3"],
        "method(s) chip need an importance file": ["--methods", "chip,cam"],
        "no layer 'features.99'": ["--layers", "features.99"],
        "method chip: none of the layers features.16 is distilled":
            ["--importance", str(two_class_file), "--methods", "chip", "--layers", "features.16"],
        "multiply the maps of two or more layers; --layers gives 1 (features.18)":
            ["--methods", "layercam-refined", "--layers", "features.18"],
        "--sanity-data re-distils CHIP's importance, so it needs --importance":
            ["--sanity-data", str(tmp_path)],
        f"--sanity-data {tmp_path / 'nowhere'}: no such folder":
            ["--importance", str(two_class_file), "--sanity-data", str(tmp_path / "nowhere")],
        "records no alpha, fill, p_keep, response, samples_per_class, seed":   # a stand-in file
            ["--importance", str(two_class_file), "--sanity-data", str(tmp_path)],
    }
    for expected, extra in cases.items():
        rc = main(evaluate_args(tmp_path, "--limit", "2", *extra))
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]   # after notes such as "no --importance: ..."
        assert rc == 2 and expected in last and "Traceback" not in err, err


@pytest.mark.slow
def test_cli_main_with_chip_and_cam(tmp_path):
    """``chip-fast evaluate`` end to end on 2 real photos, with a stand-in importance file (the
    head's weight magnitudes at features.18) so the CHIP path runs without a distillation."""
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA}")
    import torchvision
    from chip_fast.cli import main
    model = torchvision.models.mobilenet_v2()
    weights = DATA / "weights" / "mobilenet_v2_imagenet1k.pth"
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    toy_importance(model, "features.18",
                   model.classifier[1].weight.detach().abs()).save(tmp_path / "imp.chip")
    assert main([
        "evaluate", "--arch", "mobilenet_v2", "--weights", str(weights), "--val-dir", str(DATA / "imagenet-val-dev"), "--limit", "2",
        "--importance", str(tmp_path / "imp.chip"), "--methods", "chip,chip-refined,cam",
        "--faithfulness-limit", "1", "--steps", "2", "--sanity-limit", "1", "--no-plots",
        "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(res["methods"]) == {"chip@features.18", "chip-refined", "cam@features.18"}
    assert res["methods"]["chip@features.18"]["layer"] == "features.18"
    assert res["n_images"] == 2 and "deletion_auc" in res["methods"]["cam@features.18"]


@pytest.mark.slow   # two gradient passes per photo through the real MobileNetV2
def test_refinecam_over_two_layers_with_max_box_acc_v2(tmp_path, capsys):
    """The RefineCAM peer runs once over both --layers, and its row has MaxBoxAccV2."""
    if not VAL_DEV.is_dir() or not WEIGHTS.is_file():
        pytest.skip(f"real test data not found at {DATA}")
    pytest.importorskip("pytorch_grad_cam")
    rc = main(evaluate_args(tmp_path, "--limit", "2", "--methods", "layercam,layercam-refined",
                            "--layers", "features.14.conv.0,features.18"))
    std = capsys.readouterr()
    assert rc == 0, std.err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["methods"]) == ["layercam@features.14.conv.0", "layercam@features.18",
                                    "layercam-refined"]
    row = res["methods"]["layercam-refined"]
    assert row["layer"] == "features.14.conv.0+features.18"
    assert 0 <= row["max_box_acc_v2"] <= 1 and "max_box_acc_v2@0.7" in row
    assert "| layercam-refined | features.14.conv.0+features.18 |" in std.out


@pytest.mark.slow   # two exact distillations of features.18 (one per model) and 2 photos
def test_sanity_data_redistils_the_randomised_copy(mobilenet_v2, tmp_path, capsys):
    """``--sanity-data``: CHIP's sanity check distils the randomised copy again from the
    folder, with the file's settings, and the row says so."""
    from tests.helpers import SAMPLE_TRAIN
    if not VAL_DEV.is_dir() or not SAMPLE_TRAIN.is_dir():
        pytest.skip(f"real test data not found at {DATA}")
    imp = chip_fast.distill_all_classes(mobilenet_v2, SAMPLE_TRAIN, ["features.18"],
                                        classes=FIRST_TWO, progress=False)
    path = imp.save(tmp_path / "two.chip")
    rc = main(evaluate_args(tmp_path, "--importance", str(path), "--limit", "4",
                            "--only-distilled", "--methods", "chip", "--sanity-limit", "2",
                            "--sanity-data", str(SAMPLE_TRAIN)))
    std = capsys.readouterr()
    assert rc == 0, std.err
    row = json.loads((tmp_path / "out" / "results.json").read_text())["methods"]["chip@features.18"]
    assert row["sanity_importance"] == "re-distilled" and row["sanity_spearman"] < 0.999
    assert "†" not in std.out
