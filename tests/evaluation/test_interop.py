"""CHIP behind other toolkits' interfaces (``chip_fast.evaluation.interop``): ``ChipCAM`` and
``explain_func`` give CAM when the importance is the head's weights at the pooled layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.evaluation.helpers import toy_importance


def test_chipcam_and_explain_func_match_relu_cam():
    """CHIP with (the magnitude of) the head's weights as importance at the pooled layer is CAM."""
    pytest.importorskip("pytorch_grad_cam")
    import torchvision
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from chip_fast.evaluation import ChipCAM, explain_func
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=5).eval()
    w = model.classifier[1].weight.detach().abs()      # > 0: no map is zeroed by the ReLU
    imp = toy_importance(model, "features.18", w)
    x = torch.randn(2, 3, 64, 64)
    with ChipCAM(model, imp, target_layers=[model.features[18]]) as cam:
        assert cam.layers == ["features.18"]
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
        top1 = cam(input_tensor=x)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():
        a = model.features(x)
        ref = torch.relu(torch.einsum("bk,bkhw->bhw", w[[1, 3]], a))
        ref = torch.nn.functional.interpolate(ref[:, None], size=(64, 64), mode="bilinear",
                                              align_corners=False)[:, 0].flatten(1)
        ref = (ref - ref.min(1, keepdim=True).values) / (ref.max(1, keepdim=True).values
                                                         - ref.min(1, keepdim=True).values)
    assert np.allclose(maps.reshape(2, -1), ref.numpy(), atol=1e-4)
    q = explain_func(model, x.numpy(), np.array([1, 3]), importance=imp)
    assert q.shape == (2, 1, 64, 64) and np.allclose(q[:, 0], maps, atol=1e-6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert np.allclose(top1, explain_func(model, x, pred, importance=imp)[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="importance"):
        explain_func(model, x, [1, 3])
