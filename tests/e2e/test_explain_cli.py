"""``chip-fast explain`` as a user meets it, on the real MobileNetV2 and real photos (skipped
without ../shared/data): a file that holds some classes, overlays at each photo's own size,
raw maps and index.html, and bad requests refused before any work with one line and exit 2.

The importance is a stand-in (the head's weight magnitudes at features.18, classes 281 tabby
and 285 Egyptian cat only), so no distillation runs."""
from __future__ import annotations

import os

import numpy as np
import torch
import pytest
from PIL import Image

import chip_fast
from chip_fast.data.classes import imagenet_classes
from chip_fast.cli import main
from chip_fast.models.fingerprint import model_fingerprint
from tests.helpers import WEIGHTS
from tests.helpers import cli_error as run_error

TABBY, EGYPTIAN, TENCH = "n02123159", "n02123045", "n01440764"   # top-1: 281, 285, 0


@pytest.fixture(scope="module")
def partial_file(mobilenet_v2, tmp_path_factory):
    w = mobilenet_v2.classifier[1].weight.detach().abs().clone()
    keep = [281, 285]
    w[[c for c in range(1000) if c not in keep]] = 0
    imp = chip_fast.Importance(weights={"features.18": w}, classes=keep, num_classes=1000,
                               fingerprint=model_fingerprint(mobilenet_v2), settings={},
                               class_names=list(imagenet_classes()[1]))
    return imp.save(tmp_path_factory.mktemp("imp") / "cats.chip")


def photo(train, wnid):
    return train / wnid / f"{wnid}_sample.JPEG"


def explain_args(imp, *extra):
    return ["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--importance",
            str(imp), "--device", "cpu", *extra]


def test_partial_file_explains_what_it_can_and_names_each_skip(partial_file, sample_train,
                                                               tmp_path, capsys):
    out = tmp_path / "ov"
    images = [str(photo(sample_train, w)) for w in (TABBY, EGYPTIAN, TENCH)]
    old = os.umask(0o022)
    try:
        rc = main(explain_args(partial_file, "--images", *images, "--out", str(out)))
    finally:
        os.umask(old)
    std = capsys.readouterr()
    assert rc == 0
    assert f"{images[2]}: skipped: its top-1 class 0 (tench) is not distilled" in std.err
    assert "[3/3 images" in std.err and "ETA" in std.err        # progress, per image
    assert "2 overlay(s) of 3 image(s)" in std.out and "1 skipped" in std.out
    for wnid, c in ((TABBY, 281), (EGYPTIAN, 285)):
        png, npy = out / f"{wnid}_sample_class{c}.png", out / f"{wnid}_sample_class{c}.npy"
        with Image.open(photo(sample_train, wnid)) as src, Image.open(png) as ov:
            assert ov.size == src.size != (224, 224)      # the photo's own size and aspect
        raw = np.load(npy)
        assert raw.shape == (224, 224) and raw.dtype == np.float32
        assert 0 <= raw.min() and raw.max() == pytest.approx(1.0)
        assert png.stat().st_mode & 0o777 == 0o644 == npy.stat().st_mode & 0o777
    page = (out / "index.html").read_text()
    assert f"{TABBY}_sample_class281.png" in page and "Skipped (1)" in page
    assert images[2] in page and "Model top-5" in page and "outside that crop" in page
    assert not list(out.glob(f"{TENCH}*"))

    rc = main(explain_args(partial_file, "--images", images[2], "--classes", "top-distilled",
                           "--out", str(tmp_path / "best")))
    assert rc == 0 and len(list((tmp_path / "best").glob(f"{TENCH}_sample_class28[15].png"))) == 1


def test_no_explainable_image_exits_1(partial_file, sample_train, tmp_path, capsys):
    rc = main(explain_args(partial_file, "--images", str(photo(sample_train, TENCH)),
                           "--out", str(tmp_path / "ov")))
    assert rc == 1 and "0 overlay(s) of 1 image(s)" in capsys.readouterr().out


def test_bad_requests_are_refused_before_any_work(partial_file, sample_train, tmp_path, capsys):
    img = str(photo(sample_train, TABBY))
    out = tmp_path / "ov"
    base = explain_args(partial_file, "--images", img, "--out", str(out))
    assert "class 5000 does not exist: the model has 1000 classes (0-999)" in \
        run_error(base + ["--classes", "5000"], capsys)
    assert "classes 0 are not distilled in this importance file (it holds 2 of 1000 " \
           "classes: 281, 285)" in run_error(base + ["--classes", "0,281"], capsys)
    assert "layers ['features.3'] were not distilled" in \
        run_error(base + ["--layers", "features.3"], capsys)
    assert "bad class list '5-2': a range goes up, e.g. 2-5" in \
        run_error(base + ["--classes", "5-2"], capsys)
    assert "bad class list '-3': class indices are 0 or more" in \
        run_error(base + ["--classes", "-3"], capsys)
    assert not out.exists()
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"mine")
    assert f"--out {taken} is an existing file" in \
        run_error(explain_args(partial_file, "--images", img, "--out", str(taken)), capsys)
    assert taken.read_bytes() == b"mine"


def test_missing_and_damaged_inputs_are_one_line(partial_file, sample_train, tmp_path, capsys):
    img, out = str(photo(sample_train, TABBY)), ["--out", str(tmp_path / "ov")]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 64)
    (tmp_path / "empty").mkdir()
    cases = {
        "importance file": explain_args(tmp_path / "none.chip", "--images", img, *out),
        "junk.bin": explain_args(junk, "--images", img, *out),
        "no image or folder": explain_args(partial_file, "--images", str(tmp_path / "x.jpg"), *out),
        "no images (": explain_args(partial_file, "--images", str(tmp_path / "empty"), *out),
    }
    for expected, argv in cases.items():
        assert expected in run_error(argv, capsys)
    bad_weights = explain_args(partial_file, "--images", img, *out)
    bad_weights[bad_weights.index("--weights") + 1] = str(junk)
    assert "cannot be read as a PyTorch state_dict" in run_error(bad_weights, capsys)
    bad_weights[bad_weights.index("--weights") + 1] = str(WEIGHTS)
    bad_weights[bad_weights.index("--arch") + 1] = "resnet18"
    assert "is not a state_dict of torchvision's resnet18: 122 missing keys" in \
        run_error(bad_weights, capsys)


def test_pretrained_weights_without_internet_say_how_to_pass_them(partial_file, sample_train,
                                                                  tmp_path, capsys, monkeypatch):
    from urllib.error import URLError
    import torchvision.models._api as api

    def offline(*a, **k):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    argv = explain_args(partial_file, "--images", str(photo(sample_train, TABBY)),
                        "--out", str(tmp_path / "ov"))
    del argv[argv.index("--weights"):argv.index("--weights") + 2]
    err = run_error(argv, capsys)
    assert "could not download torchvision's pretrained weights of mobilenet_v2" in err
    assert "pass a state_dict file with --weights" in err


def test_refine_power_reaches_the_maps(mobilenet_v2, sample_train, tmp_path):
    # A two-layer stand-in whose 14x14 layer is recorded as non-affine: the CLI's raw map is
    # explain's at the default power, and --refine-power 1 gives the plain product.
    from chip_fast.models.loading import preprocess_of
    g = torch.Generator().manual_seed(0)
    w18 = mobilenet_v2.classifier[1].weight.detach().abs().clone()
    imp = chip_fast.Importance(
        weights={"features.14.conv.0": torch.rand(1000, 576, generator=g), "features.18": w18},
        classes=[281], num_classes=1000, fingerprint=model_fingerprint(mobilenet_v2),
        settings={"paths": {"features.14.conv.0": "elementwise", "features.18": "affine"}})
    path = imp.save(tmp_path / "two.chip")
    src = photo(sample_train, TABBY)
    with Image.open(src) as im:
        x = preprocess_of(mobilenet_v2)(im.convert("RGB"))[None]
    for extra, power in (((), 0.5), (("--refine-power", "1"), 1.0)):
        out = tmp_path / f"p{power}"
        assert main(explain_args(path, "--images", str(src), "--classes", "281", "--out",
                                 str(out), *extra)) == 0
        want = chip_fast.explain(mobilenet_v2, imp, x, 281, refine_power=power)[0].numpy()
        np.testing.assert_allclose(np.load(out / f"{TABBY}_sample_class281.npy"), want,
                                   atol=1e-5)
