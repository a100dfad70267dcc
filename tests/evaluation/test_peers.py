"""Peer methods (``chip_fast.evaluation.peers``): the Grad-CAM peer on the real MobileNetV2 and
real photos (skipped without ../shared/data) against Grad-CAM computed here without gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chip_fast.evaluation import metrics as M
from chip_fast.evaluation.dataset import load_val_dir
from tests.evaluation.helpers import brute_force_box_accuracy
from tests.helpers import SHARED as DATA


def gradcam_of_gap_linear_by_hand(model, x: torch.Tensor, classes) -> np.ndarray:
    """Grad-CAM at the layer feeding global average pooling into one linear layer, from the
    paper's own identity (Selvaraju et al., sec. 3.1: there Grad-CAM is CAM): the gradient of
    the class score with respect to A_k(i, j) is W_ck / (h w), so the channel weights are
    W_ck / (h w) and the map is ReLU(sum_k W_ck A_k) up to scale. pytorch-grad-cam's output
    scaling: min-max (with its 1e-7) at the layer's resolution, bilinear resize, min-max again."""
    with torch.no_grad():
        a = model.features(x)
        cam = torch.relu(torch.einsum("bk,bkhw->bhw", model.classifier[1].weight[classes], a))
    def minmax(m):
        m = m - m.amin((1, 2), keepdim=True)
        return m / (1e-7 + m.amax((1, 2), keepdim=True))
    up = torch.nn.functional.interpolate(minmax(cam)[:, None], size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)[:, 0]
    return minmax(up).numpy()


@pytest.mark.slow
def test_gradcam_on_real_photos_matches_an_independent_computation():
    """The harness's Grad-CAM peer (pytorch-grad-cam, hooks and autograd) at features.18 of the
    real MobileNetV2 on the first 30 dev photos equals Grad-CAM computed here without gradients
    from the paper's identity for a GAP + linear head, and the harness's box accuracy of those
    maps equals the brute-force loop's of the independent maps."""
    if not DATA.is_dir():
        pytest.skip(f"real test data not found at {DATA}")
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("scipy")
    import torchvision
    from chip_fast.evaluation.peers import peer
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(DATA / "weights" / "mobilenet_v2_imagenet1k.pth",
                                     weights_only=True), strict=True)
    model.eval()
    ds = load_val_dir(DATA / "imagenet-val-dev", limit=30)
    x = torch.stack([ds[i].image for i in range(len(ds))])
    boxes = [ds[i].boxes for i in range(len(ds))]
    maps = peer("gradcam", "features.18")(model, x, ds.labels)
    ref = gradcam_of_gap_linear_by_hand(model, x, ds.labels)
    assert np.abs(maps - ref).max() < 1e-5          # measured 1.7e-6
    s = M.localization_summary(M.localization_ious(maps, boxes), np.ones(len(ds), bool))
    curve = brute_force_box_accuracy(ref, boxes, M.DEFAULT_THRESHOLDS)
    # one photo of slack: maps equal to 1e-5 may still fall on either side of a threshold
    assert np.abs(np.array(s["box_acc_curve"]) - curve).max() <= 1.01 / len(ds)
    assert s["max_box_acc"] == pytest.approx(curve.max(), abs=1.01 / len(ds))
    assert s["gt_known@0.2"] == pytest.approx(curve[20], abs=1.01 / len(ds))


def _independent_product(model, x, classes, cam_cls, layers):
    """The product of the library's own per-layer CAMs (each already min-max normalised at the
    input size), min-max normalised again, computed here without RefineCAM."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    mods = dict(model.named_modules())
    prod = np.ones((len(x), *x.shape[-2:]))
    for layer in layers:
        with cam_cls(model=model, target_layers=[mods[layer]]) as c:
            prod = prod * c(input_tensor=x, targets=[ClassifierOutputTarget(int(k))
                                                     for k in classes])
    prod = prod - prod.min((1, 2), keepdims=True)
    return prod / (1e-7 + prod.max((1, 2), keepdims=True))


@pytest.mark.parametrize("name,base", [("layercam-refined", "LayerCAM"),
                                       ("gradcam++-refined", "GradCAMPlusPlus")])
def test_refine_cam_peer_is_the_product_of_the_base_maps(tiny_net, name, base):
    """The RefineCAM peers on a tiny model: the product of the base method's per-layer maps,
    labelled with both layers, and no hook left on the model afterwards."""
    gc = pytest.importorskip("pytorch_grad_cam")
    from chip_fast.evaluation.peers import peer
    layers = ["features.1", "features.2"]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    classes = [0, 3, 5]
    fn = peer(name, layers)
    maps = fn(tiny_net, x, classes)
    assert fn.method == name and fn.layer == "features.1+features.2"
    assert maps.shape == (3, 16, 16) and maps.dtype == np.float32
    ref = _independent_product(tiny_net, x, classes, getattr(gc, base), layers)
    assert np.abs(maps - ref).max() < 1e-5
    assert all(not m._forward_hooks and not m._backward_hooks
               for m in tiny_net.modules())


def test_refined_peers_need_two_layers():
    from chip_fast.evaluation.methods import DEFAULT_METHODS, check_refined_peers
    names = DEFAULT_METHODS.split(",")
    assert check_refined_peers(names, ["features.18"], asked=False) == [
        n for n in names if n not in ("gradcam++-refined", "layercam-refined")]
    assert check_refined_peers(names, ["a", "b"], asked=False) == names
    with pytest.raises(ValueError, match="two or more layers"):
        check_refined_peers(["layercam-refined"], ["features.18"], asked=True)


def test_build_methods_runs_each_refined_peer_once_over_all_layers(tiny_net):
    pytest.importorskip("pytorch_grad_cam")
    from chip_fast.evaluation.methods import build_methods
    methods = build_methods(tiny_net, ["layercam", "layercam-refined"],
                            ["features.1", "features.2"], log=lambda s: None)
    assert list(methods) == ["layercam@features.1", "layercam@features.2", "layercam-refined"]
    assert methods["layercam-refined"].layer == "features.1+features.2"


def test_gradient_peers_on_a_cpu_run_in_row_chunks_with_the_same_maps(tiny_net, monkeypatch):
    """Without a batch size, a gradient peer on a CPU takes the rows chip_fast's own CPU forward
    takes (chip_fast.models.row_chunks), and its maps are those of the whole batch."""
    pytest.importorskip("pytorch_grad_cam")
    from chip_fast.evaluation import peers
    from chip_fast.models import row_chunks
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    classes = [0, 1, 2, 3, 4, 5, 0]
    monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 1)          # one row per chunk
    assert peers.peer_batch(tiny_net, x, None) == 1 and peers.peer_batch(tiny_net, x, 4) == 4
    calls = []
    for name, at in (("layercam", "features.2"), ("layercam-refined", ["features.1", "features.2"])):
        fn = peers.peer(name, at)
        real = tiny_net.forward
        monkeypatch.setattr(tiny_net, "forward", lambda t: calls.append(len(t)) or real(t))
        chunked = fn(tiny_net, x, classes)
        monkeypatch.undo()
        monkeypatch.setattr(row_chunks, "CHUNK_BYTES", 1)
        whole = (peers.grad_cam_family(name, at, batch_size=32) if isinstance(at, str)
                 else peers.refine_cam("layercam", at, batch_size=32))(tiny_net, x, classes)
        assert set(calls) == {1}, calls
        assert np.abs(chunked - whole).max() < 1e-5
        calls.clear()
