"""Evaluation harness: metrics on synthetic maps with known answers and against a brute-force
loop written here, annotation parsing, box transforms, CHIP interop, the runner end to end, and
the Grad-CAM peer on real photos against an independent computation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chip_fast.evaluation import metrics as M
from chip_fast.data.classes import read_mapping
from chip_fast.evaluation.annotations import AnnotationError, read_loc_csv, read_voc_xml
from chip_fast.evaluation.dataset import LocSample, load_val_dir
from chip_fast.data.preprocess import Preprocess, transform_boxes
from tests.helpers import SHARED

DATA = SHARED


def rect_map(h: int, w: int, box: tuple[int, int, int, int], value: float = 1.0) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value      # pixels x0..x1-1: the box [x0, x1] in continuous coordinates
    return m


# --- localization ------------------------------------------------------------------------------

def test_rectangle_equal_to_box_has_iou_one_and_accuracy_one():
    box = (30, 40, 130, 100)
    maps = rect_map(224, 224, box)[None]
    gt = [np.array([box], float)]
    ious = M.localization_ious(maps, gt)
    inner = (M.DEFAULT_THRESHOLDS > 0) & (M.DEFAULT_THRESHOLDS < 1)
    assert np.allclose(ious[0, inner], 1.0)
    s = M.localization_summary(ious, np.array([True]))
    assert s["gt_known@0.2"] == s["gt_known@0.15"] == s["max_box_acc"] == 1.0
    assert s["top1_loc_err"] == 0.0
    # the class was wrong: top-1 localization fails though the box is perfect
    assert M.localization_summary(ious, np.array([False]))["top1_loc_err"] == 1.0


def test_shifted_rectangle_gives_computed_iou():
    maps = rect_map(224, 224, (60, 50, 100, 90))[None]            # 40 x 40, shifted by 10 px
    ious = M.localization_ious(maps, [np.array([[50, 50, 90, 90.]])], [0.2, 0.5])
    assert np.allclose(ious, 30 * 40 / (2 * 1600 - 30 * 40))      # 0.6
    far = M.localization_ious(rect_map(224, 224, (80, 50, 120, 90))[None],
                              [np.array([[50, 50, 90, 90.]])], [0.2])
    assert far[0, 0] == pytest.approx(10 * 40 / (3200 - 400)) and far[0, 0] < 0.5


def test_largest_component_and_any_gt_box_counts():
    m = rect_map(100, 100, (5, 5, 15, 15)) + rect_map(100, 100, (50, 50, 90, 80), 0.5)
    boxes = M.largest_component_boxes(m, [0.2, 0.6])
    assert boxes[0].tolist() == [50, 50, 90, 80]      # the larger blob, though dimmer
    assert boxes[1].tolist() == [5, 5, 15, 15]        # only the bright blob survives 0.6
    gt = [np.array([[0, 0, 20, 20], [50, 50, 90, 80.]])]
    assert np.allclose(M.localization_ious(m[None], gt, [0.2, 0.6]), [[1.0, 0.25]])
    assert M.largest_component_boxes(np.zeros((8, 8)), [0.5])[0].tolist() == [-1] * 4
    assert M.localization_ious(np.zeros((1, 8, 8)), [np.array([[0, 0, 8, 8.]])], [0.5])[0, 0] == 0


def brute_force_box_accuracy(maps: np.ndarray, gts: list[np.ndarray], thresholds,
                             iou_threshold: float = 0.5) -> np.ndarray:
    """Box accuracy per threshold, written out independently of the harness: per map and
    threshold t, the pixels with value > t * max, their 8-connected components (scipy, not
    OpenCV), the largest one's box [x0, y0, x1 + 1, y1 + 1], its IoU with each ground-truth box
    by the textbook formula, a hit at IoU >= 0.5 with any of them."""
    from scipy import ndimage
    acc = []
    for t in thresholds:
        hits = 0
        for m, gt in zip(maps, gts):
            labels, n = ndimage.label(m > t * m.max(), structure=np.ones((3, 3)))
            if n == 0:
                continue
            ys, xs = np.nonzero(labels == 1 + np.argmax(np.bincount(labels.ravel())[1:]))
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            for gx0, gy0, gx1, gy1 in gt:
                inter = max(0, min(x1, gx1) - max(x0, gx0)) * max(0, min(y1, gy1) - max(y0, gy0))
                union = (x1 - x0) * (y1 - y0) + (gx1 - gx0) * (gy1 - gy0) - inter
                if inter / union >= iou_threshold:
                    hits += 1
                    break
        acc.append(hits / len(maps))
    return np.array(acc)


def test_box_accuracy_curve_known_by_construction():
    """Four maps whose box accuracy at every threshold follows from how they are drawn: the
    object box on a flat background of 0.305 (found from t = 0.31 on: below, the whole image is
    one component, IoU 0.19), the same on 0.605 (from 0.61), a box in the wrong place (never),
    and the box on zero (always, until t = 1 keeps no pixel)."""
    box = (16, 16, 48, 40)
    maps = np.stack([rect_map(64, 64, box) + 0.305 * (1 - rect_map(64, 64, box)),
                     rect_map(64, 64, box) + 0.605 * (1 - rect_map(64, 64, box)),
                     rect_map(64, 64, (0, 0, 20, 20)),
                     rect_map(64, 64, box)])
    s = M.localization_summary(M.localization_ious(maps, [np.array([box], float)] * 4),
                               np.array([True, False, True, True]))
    t = M.DEFAULT_THRESHOLDS
    expected = np.select([t <= 0.30, t <= 0.60, t < 1.0], [0.25, 0.5, 0.75], 0.0)
    assert np.allclose(s["box_acc_curve"], expected)
    assert s["max_box_acc"] == 0.75 and s["max_box_acc_threshold"] == 0.61
    assert s["gt_known@0.2"] == s["gt_known@0.15"] == 0.25
    assert s["top1_loc_err"] == 0.75          # only the last map is right at 0.2 with its class


def test_box_accuracy_equals_a_brute_force_loop():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    maps, gts = [], []
    for _ in range(12):
        cx, cy, s = rng.uniform(10, 54), rng.uniform(10, 54), rng.uniform(4, 14)
        maps.append(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)) + 0.1 * rng.random((64, 64)))
        gts.append(np.array([[cx - s, cy - s, cx + s, cy + s]]).clip(0, 64))
    maps = np.array(maps)
    s = M.localization_summary(M.localization_ious(maps, gts), np.ones(12, bool))
    expected = brute_force_box_accuracy(maps, gts, M.DEFAULT_THRESHOLDS)
    assert len(set(expected)) > 3       # a curve that changes with the threshold: something to find
    assert np.array_equal(s["box_acc_curve"], expected)
    assert s["max_box_acc"] == expected.max()
    assert s["gt_known@0.2"] == expected[20] and s["gt_known@0.15"] == expected[15]


def test_pointing_game_tolerance():
    gt = [np.array([[100, 100, 150, 150.]])]
    def at(x, y):
        m = np.zeros((224, 224), np.float32)
        m[y, x] = 1
        return m[None]
    assert M.pointing_game(at(120, 120), gt)[0]           # inside
    assert M.pointing_game(at(165, 120), gt)[0]           # 15 px right of the box
    assert not M.pointing_game(at(166, 120), gt)[0]       # 16 px
    assert not M.pointing_game(at(162, 162), gt)[0]       # 12 px in x and y: 17 px away
    assert M.pointing_game(at(166, 120), gt, tolerance=16.0)[0]


# --- faithfulness and sanity -------------------------------------------------------------------

class QuadrantModel(torch.nn.Module):
    """Class 0's logit is the mean of the top-left quadrant's first channel (scaled), class 1's
    a constant: removing the quadrant is what lowers class 0's probability."""
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0, :16, :16].mean((1, 2)) * self.scale
        return torch.stack([q, torch.full_like(q, 4.0)], 1)


def test_deletion_auc_of_perfect_map_below_reversed_map():
    model = QuadrantModel()
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, :16, :16] = 3.0       # a bright quadrant: blur, mean and zero all dim it
    perfect = rect_map(32, 32, (0, 0, 16, 16))
    maps = np.stack([perfect, 1 - perfect])
    for substrate in ("zero", "mean", "blur"):
        c = M.deletion_insertion_curves(model, x, maps, [0, 0], n_steps=8, substrate=substrate,
                                        batch_size=5)
        assert c["deletion"].shape == (2, 9) and len(c["fraction"]) == 9
        d, i = M.auc(c["deletion"], c["fraction"]), M.auc(c["insertion"], c["fraction"])
        assert d[0] < d[1] and i[0] > i[1], substrate
    assert np.allclose(c["deletion"][:, 0], c["insertion"][:, -1])   # both: the intact image


def test_spearman_and_randomized_copy():
    a = np.arange(20, dtype=float).reshape(2, 10)
    assert np.allclose(M.spearman_rows(a, a), 1)
    assert np.allclose(M.spearman_rows(a, -a), -1)
    assert np.isnan(M.spearman_rows(np.ones((1, 5)), a[:1, :5]))[0]
    import torchvision
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    rnd, names = M.randomized_copy(model, 2)
    assert names == ["features.18", "classifier.1"]
    assert not torch.equal(rnd.classifier[1].weight, model.classifier[1].weight)
    assert not torch.equal(rnd.features[18][0].weight, model.features[18][0].weight)
    assert torch.equal(rnd.features[17].conv[0][0].weight, model.features[17].conv[0][0].weight)


# --- annotations and box transforms ------------------------------------------------------------

def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


def test_read_loc_csv(tmp_path):
    p = write_csv(tmp_path / "loc.csv", ["img_a,n01 1 2 30 40 n01 5 6 7 8 ", "img_b,n02 0 0 10 10"])
    gt = read_loc_csv(p)
    assert gt["img_a"].wnid == "n01" and gt["img_a"].boxes.tolist() == [[1, 2, 30, 40], [5, 6, 7, 8]]
    assert gt["img_b"].boxes.shape == (1, 4)
    bad = write_csv(tmp_path / "bad.csv", ["img_a,n01 1 2 30 40", "img_b,n02 0 0 10"])
    with pytest.raises(AnnotationError, match=r"bad\.csv:3"):
        read_loc_csv(bad)
    with pytest.raises(AnnotationError, match=r"nan\.csv:2: non-numeric"):
        read_loc_csv(write_csv(tmp_path / "nan.csv", ["img_a,n01 1 2 x 40"]))
    with pytest.raises(AnnotationError, match="x_max < x_min"):
        read_loc_csv(write_csv(tmp_path / "inv.csv", ["img_a,n01 30 2 1 40"]))
    (tmp_path / "hdr.csv").write_text("a,b\n")
    with pytest.raises(AnnotationError, match=r"hdr\.csv:1"):
        read_loc_csv(tmp_path / "hdr.csv")


VOC = """<annotation><folder>val</folder><filename>{name}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>
</annotation>"""


def test_read_voc_xml(tmp_path):
    p = tmp_path / "ILSVRC2012_val_00000001.xml"
    p.write_text(VOC.format(name="ILSVRC2012_val_00000001", w=500, h=375, wnid="n01751748",
                            x0=111, y0=108, x1=441, y1=332))
    gt = read_voc_xml(p)
    assert (gt.image_id, gt.wnid, gt.size) == ("ILSVRC2012_val_00000001", "n01751748", (500, 375))
    assert gt.boxes.tolist() == [[111, 108, 441, 332]]
    p.write_text("<annotation><size><width>5</width><height>5</height></size>"
                 "<object><name>n01</name></object></annotation>")
    with pytest.raises(AnnotationError, match="ILSVRC2012_val_00000001.xml"):
        read_voc_xml(p)
    p.write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="not well-formed"):
        read_voc_xml(p)


def test_synset_mapping(tmp_path):
    p = tmp_path / "syn.txt"
    p.write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    assert read_mapping(p) == (["n01", "n02"], ["tench, Tinca tinca", "goldfish"])
    p.write_text("n01 tench\n\nn02 goldfish\n")
    with pytest.raises(ValueError, match=r"syn\.txt:2"):
        read_mapping(p)


def test_box_transforms_resize_and_center_crop():
    boxes = np.array([[0, 0, 227, 227], [22.7, 45.4, 113.5, 227]])
    assert np.allclose(transform_boxes(boxes, (227, 227), "resize", 224),
                       [[0, 0, 224, 224], [22.4, 44.8, 112, 224]])
    # 400 x 300 -> short side 256: 341 x 256; central 224 crop starts at (58, 16)
    b = np.array([[0, 0, 400, 300], [0, 0, 40, 40], [200, 150, 260, 210]], float)
    out = transform_boxes(b, (400, 300), "center_crop", 224, 256)
    sx, sy = 341 / 400, 256 / 300                                     # torchvision truncates 341.3
    assert np.allclose(out[0], [0, 0, 224, 224])                     # clipped by the crop
    assert len(out) == 2                                             # (0,0,40,40) fell outside
    assert np.allclose(out[1], [200 * sx - 58, 150 * sy - 16, 260 * sx - 58, 210 * sy - 16])


@pytest.mark.parametrize("mode", ["resize", "center_crop"])
def test_boxes_follow_the_pixels(mode):
    """A bright rectangle drawn in a photo lands where its transformed box says."""
    img = np.zeros((300, 400, 3), np.uint8)
    img[90:210, 150:330] = 255
    box = np.array([[150, 90, 330, 210.]])
    x = Preprocess(size=224, resize=256, mode=mode)(Image.fromarray(img))
    bright = (x[0] > 0).numpy()
    ys, xs = np.nonzero(bright)
    got = transform_boxes(box, (400, 300), mode, 224, 256)[0]
    assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], got, atol=1.5)


def test_load_val_dir_csv_and_xml(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "xml").mkdir()
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01 a\nn02 b\n")
    for k, wnid in enumerate(["n02", "n01"]):
        Image.fromarray(np.full((200, 100, 3), 128, np.uint8)).save(
            tmp_path / "images" / f"im{k}.JPEG")
        # the XML refers to the original 400 x 200 photo: boxes follow the stored 100 x 200 one
        (tmp_path / "xml" / f"im{k}.xml").write_text(VOC.format(
            name=f"im{k}", w=400, h=200, wnid=wnid, x0=0, y0=0, x1=200, y1=100))
    ds = load_val_dir(tmp_path, preprocess=Preprocess(size=64, mode="resize"))
    assert len(ds) == 2 and ds.labels == [1, 0]
    s = ds[0]
    assert s.image.shape == (3, 64, 64) and np.allclose(s.boxes, [[0, 0, 32, 32]])
    write_csv(tmp_path / "LOC_val_solution.csv", ["im1,n02 0 0 50 100", "im0,n03 0 0 1 1"])
    with pytest.raises(AnnotationError, match="n03"):
        load_val_dir(tmp_path)
    ds = load_val_dir(tmp_path, xml_dir=tmp_path / "xml", limit=1)
    assert len(ds) == 1


# --- interop and runner ------------------------------------------------------------------------

def toy_importance(model: torch.nn.Module, layer: str, weights: torch.Tensor):
    import chip_fast
    from chip_fast.models.fingerprint import model_fingerprint
    n = weights.shape[0]
    return chip_fast.Importance(weights={layer: weights}, classes=list(range(n)), num_classes=n,
                                fingerprint=model_fingerprint(model), settings={})


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


class GapToy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.classifier = torch.nn.Sequential(torch.nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def test_evaluate_writes_results(tmp_path):
    from chip_fast.evaluation import EvalSettings, evaluate
    from chip_fast.evaluation.peers import cam
    torch.manual_seed(0)
    model = GapToy().eval()
    data = [LocSample(f"im{i}", torch.randn(3, 32, 32), i % 3, np.array([[4, 4, 20, 24.]]))
            for i in range(5)]

    def oracle(model, images, classes):
        return np.stack([rect_map(32, 32, (4, 4, 20, 24))] * len(images))
    oracle.layer = "-"

    def broken(model, images, classes):
        raise RuntimeError("no maps today")

    res = evaluate(model, {"oracle": oracle, "cam": cam("features"), "broken": broken}, data,
                   tmp_path, EvalSettings(batch_size=2, faithfulness_limit=3, faithfulness_steps=4,
                                          sanity_limit=3, sanity_top_blocks=1), plots=False,
                   log=lambda s: None)
    r = res["methods"]["oracle"]
    assert r["gt_known@0.2"] == r["max_box_acc"] == r["pointing"] == 1.0
    assert len(r["deletion_curve"]) == 5 and r["sanity_spearman"] == pytest.approx(1.0)
    assert "error" in res["methods"]["broken"] and "no maps today" in res["methods"]["broken"]["error"]
    assert res["methods"]["cam"]["layer"] == "features" and res["sanity_randomized_blocks"] == ["classifier.0"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["n_images"] == 5 and saved["faithfulness_images"] == 3
    md = (tmp_path / "results.md").read_text()
    assert "| oracle | - | 1.000 |" in md and "MaxBoxAcc" in md and "error: RuntimeError" in md


# --- real photos -------------------------------------------------------------------------------

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
