"""timm models (``chip_fast.models.timm_models``): ``timm:<name>`` loads from a checkpoint file
(.pth or .safetensors) with the same one-line errors as torchvision's path, and a timm model's
preprocessing is its own data config, pixel for pixel what timm's eval transform makes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import chip_fast
from chip_fast.data.preprocess import Preprocess
from chip_fast.models.timm_models import is_timm_model

timm = pytest.importorskip("timm", reason="timm models need: pip install 'chip-fast[timm]'")


@pytest.fixture(scope="module")
def r18_files(tmp_path_factory):
    """A random-weight timm resnet18 with a 10-class head, saved both ways."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    root = tmp_path_factory.mktemp("r18")
    torch.save(model.state_dict(), root / "r18.pth")
    save_file(model.state_dict(), str(root / "r18.safetensors"))
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, root / "train_ckpt.pth")
    return model, root


@pytest.mark.parametrize("file", ["r18.pth", "r18.safetensors", "train_ckpt.pth"])
def test_a_checkpoint_file_loads_with_its_own_number_of_classes(r18_files, file):
    model, root = r18_files
    loaded = chip_fast.load_model("timm:resnet18", weights=root / file)
    assert is_timm_model(loaded) and not loaded.training
    assert loaded.fc.out_features == 10
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_wrong_names_and_files_are_one_line(r18_files, tmp_path):
    _, root = r18_files
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\0" * 64)
    cases = {
        "timm:resnet19": (root / "r18.pth", "unknown timm model 'resnet19' (closest: resnet18"),
        "timm:resnet18.nope": (root / "r18.pth", "tags of resnet18: resnet18.a1_in1k"),
        "timm:resnet34": (root / "r18.pth", "is not a state_dict of timm's resnet34: "),
        "timm:resnet18": (junk, "cannot be read as a PyTorch state_dict"),
    }
    for arch, (weights, expected) in cases.items():
        with pytest.raises(ValueError) as err:
            chip_fast.load_model(arch, weights=weights)
        assert expected in str(err.value) and "\n" not in str(err.value), arch
    with pytest.raises(FileNotFoundError, match="does not exist"):
        chip_fast.load_model("timm:resnet18", weights=tmp_path / "none.pth")


def test_pretrained_weights_without_internet_say_how_to_pass_them(monkeypatch):
    def offline(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **k:
                        offline() if pretrained else None)
    with pytest.raises(ValueError) as err:
        chip_fast.load_model("timm:resnet18")
    msg = str(err.value)
    assert "could not get timm's pretrained weights of resnet18 (OSError" in msg
    assert "pass a timm checkpoint (.pth or .safetensors) with --weights" in msg


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["resnext26ts", "inception_v3", "vgg11",
                                  "convnext_base.fb_in22k_ft_in1k_384"])
def test_preprocessing_is_the_models_own_eval_transform(name):
    """Size, crop fraction, crop mode, interpolation, mean and std of the data config: the same
    pixels as timm.data.create_transform (resnext26ts: 256 px, crop 0.9, bicubic; inception:
    299 px, mean/std 0.5; vgg11: bilinear; the 384 ConvNeXt: squash)."""
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(name, pretrained=False, num_classes=2)
    want = create_transform(**resolve_data_config({}, model=model))(_photo())
    got = chip_fast.preprocess_of(model)(_photo())
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_other_models_keep_their_preprocessing():
    import torchvision
    assert chip_fast.preprocess_of(torchvision.models.resnet18()) == Preprocess()
    assert not is_timm_model(torchvision.models.resnet18())
    overridden = chip_fast.preprocess_of(timm.create_model("resnet18"), mode="resize", size=227)
    assert (overridden.mode, overridden.size, overridden.interpolation) == \
        ("resize", 227, "bicubic")
