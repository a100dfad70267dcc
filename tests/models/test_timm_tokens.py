"""timm's transformers with random weights (``num_classes=10``), as a new user meets them: ViT
and DeiT (N, 1 + 14*14, C) tokens, Swin's (N, H, W, C) maps and (N, H*W, C) tokens, read as
C channels over the patch grid. The default layers are the MLPs' GELU (a presence activation),
the activation distillation perturbs is the layer's own output with every token, the maps'
activation is its grid, distilled classes get non-zero importance and maps that are not
constant, through the Python API and the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import chip_fast
from chip_fast.cli import main
from chip_fast.models.layouts import CHANNELS_LAST, TOKENS, Layout
from chip_fast.models.split import SplitModel, split_model

from tests.helpers import own_outputs, write_folder

timm = pytest.importorskip("timm", reason="timm models need: pip install 'chip-fast[timm]'")

# name -> (default layers, each one's layout): one grid in ViT and DeiT, so one layer; Swin's
# last two stages
MODELS = {
    "vit_tiny_patch16_224": {"blocks.11.mlp.act": Layout(TOKENS, (14, 14), 1)},
    "deit_tiny_patch16_224": {"blocks.11.mlp.act": Layout(TOKENS, (14, 14), 1)},
    "swin_tiny_patch4_window7_224": {"layers.2.blocks.5.mlp.act": Layout(TOKENS, (14, 14), 0),
                                     "layers.3.blocks.1.mlp.act": Layout(TOKENS, (7, 7), 0)},
}


def _model(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _check_split(model: torch.nn.Module, layouts: dict[str, Layout], x: torch.Tensor) -> dict:
    """The split's logits are the model's; its activation is each layer's own output, channels
    first, every token; its maps the grid tokens in raster order. Returns the maps."""
    split = split_model(model, list(layouts))
    assert isinstance(split, SplitModel)
    with torch.no_grad():
        out = split.run_prefix(x)
        torch.testing.assert_close(split.logits(out), model(x), rtol=1e-4, atol=1e-4)
        maps, _ = split.forward(x)
    assert split.layouts == layouts
    for layer, native in own_outputs(model, list(layouts), x).items():
        layout = layouts[layer]
        first = native.permute(0, 3, 1, 2) if layout.kind == CHANNELS_LAST else native.transpose(1, 2)
        torch.testing.assert_close(split.activation(out, layer), first, msg=layer)
        grid = first[:, :, layout.extra:].unflatten(2, layout.grid) if layout.kind == TOKENS \
            else first
        torch.testing.assert_close(maps[layer], grid, msg=layer)
        assert (maps[layer] >= -0.2).all(), layer      # GELU: presence, not a signed stream
    return maps


@pytest.mark.slow   # 10 to 45 s a model on two idle cores (a distillation through the blocks)
@pytest.mark.filterwarnings("ignore:samples_per_class")   # few samples: mechanics, not accuracy
@pytest.mark.parametrize("name", list(MODELS))
def test_token_models_default_layers_activations_and_maps(name):
    model = _model(name)
    layouts = MODELS[name]
    assert chip_fast.default_layers(model) == list(layouts)
    x = _images()
    _check_split(model, layouts, x)
    labels = torch.tensor([0, 1])
    imp = chip_fast.distill_all_classes(model, (x, labels), samples_per_class=16, folds=2,
                                        progress=False)
    assert imp.layers == list(layouts)
    assert set(imp.settings["paths"].values()) == {"elementwise"}   # the residual is an extra
    for layer in layouts:
        assert imp.weights[layer][:2].abs().sum(1).min() > 0, layer
    maps = chip_fast.explain(model, imp, x, labels)
    assert maps.shape == (2, 224, 224)
    assert (maps.flatten(1).amax(1) - maps.flatten(1).amin(1) > 0.1).all(), name


def test_register_tokens_are_extra_tokens_and_swin_stages_channels_last():
    """Four register tokens beside the class token are dropped from the maps (and perturbed
    like the others); a Swin stage's (N, H, W, C) output is C channels over its grid, not H
    channels (what a hand-named Swin layer used to be read as, without an error); a ViT's
    per-head queries are refused in one line rather than read as 3 channels."""
    x = _images(1)
    vit = _model("vit_tiny_patch16_224", reg_tokens=4)
    _check_split(vit, {"blocks.11.mlp.act": Layout(TOKENS, (14, 14), 5)}, x)
    with pytest.raises(chip_fast.LayerError) as err, torch.no_grad():
        SplitModel(vit, ["blocks.11.attn.q_norm"]).run_prefix(x)
    assert "returns (1, 3, 201, 64)" in str(err.value) and "\n" not in str(err.value)
    swin = _model("swin_tiny_patch4_window7_224")
    split = split_model(swin, ["layers.3"])
    with torch.no_grad():
        maps, _ = split.forward(x)
    assert split.layouts["layers.3"] == Layout(CHANNELS_LAST, (7, 7))
    assert tuple(maps["layers.3"].shape) == (1, 768, 7, 7)


@pytest.mark.slow   # ~30 s: a distillation and an explanation through the command line
@pytest.mark.filterwarnings("ignore:samples_per_class")
def test_deit_distils_and_explains_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(_model("deit_tiny_patch16_224").state_dict(), "deit.pth")
    write_folder(tmp_path / "train", per_class=1)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save("photo.jpg")
    arch = ["--arch", "timm:deit_tiny_patch16_224", "--weights", "deit.pth", "--device", "cpu"]
    assert main(["distill", *arch, "--data", "train", "--samples-per-class", "16",
                 "--out", "deit.chip"]) == 0
    imp = chip_fast.load_importance("deit.chip")
    assert imp.layers == ["blocks.11.mlp.act"] and imp.weights["blocks.11.mlp.act"].shape == (10, 768)
    assert main(["explain", *arch, "--importance", "deit.chip", "--images", "photo.jpg",
                 "--classes", "top-distilled", "--out", "maps"]) == 0
    raw = np.load(next((tmp_path / "maps").glob("*.npy")))
    assert raw.ndim == 2 and raw.max() - raw.min() > 0.1
