"""What ``chip_fast.explain`` (and ``explain_available``, ``chip_fast.maps.files``) refuse, and
how they say it: a bad ``refine_power``, images that are not a finite floating-point (B, C, H, W)
batch, and the forms of a request they accept (one layer as a string, the path of an importance
file). Each refusal names the bad value and what is expected, before the model runs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import chip_fast
from chip_fast.maps.explain import explain_available
from chip_fast.maps.files import check_request, explain_files, image_paths
from tests.helpers import TinyNet

LAYERS = ["features.1", "features.2"]


@pytest.fixture(scope="module")
def setup():
    """A tiny model, an importance of classes 0-2 at two layers (features.1's tail is not
    affine, so refine_power applies to it) and eight images."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 6
    imp = chip_fast.distill_all_classes(net, (images, labels), LAYERS, classes=[0, 1, 2],
                                        samples_per_class=16, progress=False)
    assert imp.settings["paths"]["features.1"] != "affine"
    return net, imp, images[:8]


@pytest.mark.parametrize("power", [-1, -0.5, float("nan"), float("inf"), float("-inf")])
def test_a_negative_or_non_finite_refine_power_is_refused_naming_it(setup, power):
    net, imp, images = setup
    with pytest.raises(ValueError, match=rf"refine_power={power!r}.*finite number >= 0"):
        chip_fast.explain(net, imp, images, 0, refine_power=power)
    with pytest.raises(ValueError, match=rf"refine_power={power!r}"):
        explain_available(net, imp, images, 0, refine_power=power)


def test_refine_power_zero_is_on_or_off_and_gives_a_real_map(setup):
    net, imp, images = setup
    maps = chip_fast.explain(net, imp, images, 0, refine_power=0)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(TypeError, match="refine_power must be a number"):
        chip_fast.explain(net, imp, images, 0, refine_power="half")


def test_a_power_that_overflows_the_activations_is_refused_not_a_nan_map(setup):
    net, imp, images = setup
    with pytest.raises(ValueError, match=r"layer features\.1 .*refine_power=50 overflow"):
        chip_fast.explain(net, imp, images * 1000, 0, refine_power=50)


def test_one_layer_may_be_given_as_a_string(setup):
    net, imp, images = setup
    one = chip_fast.explain(net, imp, images, 0, layers="features.2")
    assert torch.equal(one, chip_fast.explain(net, imp, images, 0, layers=["features.2"]))
    with pytest.raises(ValueError, match=r"layers \['features\.9'\] were not distilled; the "
                                         r"file holds \['features\.1', 'features\.2'\]"):
        chip_fast.explain(net, imp, images, 0, layers="features.9")
    with pytest.raises(TypeError, match="layer name or a list"):
        chip_fast.explain(net, imp, images, 0, layers=18)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_images_with_nan_or_inf_are_refused_naming_them(setup, bad):
    net, imp, images = setup
    x = images.clone()
    x[1, 0, 3, 3] = bad
    x[5, 2, 0, 0] = bad
    with pytest.raises(ValueError, match=r"image 1, 5 of the batch contains NaN or infinite"):
        chip_fast.explain(net, imp, x, 0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        explain_available(net, imp, x)


def test_the_path_of_an_importance_file_is_read(setup, tmp_path):
    net, imp, images = setup
    path = imp.save(tmp_path / "tiny.chip")
    expected = chip_fast.explain(net, imp, images, 0)
    assert torch.equal(chip_fast.explain(net, str(path), images, 0), expected)
    assert torch.equal(chip_fast.explain(net, path, images, 0), expected)
    assert explain_available(net, path, images, 0).rows == list(range(len(images)))
    with pytest.raises(FileNotFoundError, match="missing.chip does not exist"):
        chip_fast.explain(net, tmp_path / "missing.chip", images, 0)
    with pytest.raises(TypeError, match="chip_fast.Importance or the path.*got dict"):
        chip_fast.explain(net, {"weights": {}}, images, 0)


def test_images_not_a_float_batch_are_refused_saying_what_is_expected(setup):
    net, imp, images = setup
    as_bytes = (images * 50 + 128).clamp(0, 255).to(torch.uint8)
    with pytest.raises(TypeError, match=r"floating-point.*got dtype torch\.uint8.*preprocess_of"):
        chip_fast.explain(net, imp, as_bytes, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got shape \(3, 16, 16\).*"
                                         "preprocess_of"):
        chip_fast.explain(net, imp, images[0], 0)
    with pytest.raises(ValueError, match=r"images have 1 channel \(shape \(8, 1, 16, 16\)\), "
                                         "the model takes 3"):
        chip_fast.explain(net, imp, images[:, :1], 0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        chip_fast.explain(net, imp, images.numpy(), 0)


def test_files_take_one_layer_as_a_string_and_check_the_power_first(setup, tmp_path):
    net, imp, images = setup
    check_request(imp, tmp_path / "out", None, "features.2")
    with pytest.raises(ValueError, match=r"layers \['nope'\] were not distilled"):
        check_request(imp, tmp_path / "out", None, "nope")
    with pytest.raises(ValueError, match="refine_power=-1"):
        check_request(imp, tmp_path / "out", None, None, refine_power=-1)
    with pytest.raises(ValueError, match="on_error='ignore': give 'skip' or 'raise'"):
        explain_files(net, imp, [], tmp_path / "out", None, on_error="ignore")
    assert not (tmp_path / "out").exists()


def test_image_paths_takes_one_folder_as_a_string(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    assert image_paths(str(tmp_path)) == [tmp_path / "a.jpg"]
    assert image_paths(Path(tmp_path)) == [tmp_path / "a.jpg"]
