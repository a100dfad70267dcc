"""Metrics of saliency maps: weakly-supervised localization, pointing game, deletion/insertion
AUC (RISE) and the model-randomization sanity check.

Maps are (B, H, W) arrays in [0, 1] at the model input's size; boxes are (N, 4) arrays of
``x_min, y_min, x_max, y_max`` in continuous input coordinates: a box's area is
(x1 - x0) * (y1 - y0), and a component covering pixel columns x .. x+w-1 spans [x, x+w]. This is
the convention that reproduces the project's Grad-CAM reference numbers (GT-known 0.616 and top-1
loc err 0.502 at 0.2 on the 630 dev photos); the +1 "inclusive pixel" variant moves them ~0.5 pt.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..models.row_chunks import model_rows, run_in_chunks

# Choe et al. (CVPR 2020) search the CAM threshold on a fine grid; 0.01 steps contain 0.15 and 0.2.
DEFAULT_THRESHOLDS = np.round(np.arange(0, 101) / 100, 2)


# --- weakly-supervised localization ------------------------------------------------------------

def largest_component_boxes(saliency: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Box of the largest 8-connected component of ``map > t * max(map)`` for every threshold.

    Returns (T, 4) float boxes [x, y, x + w, y + h]; a threshold that keeps no pixel gives (-1,-1,-1,-1),
    which has IoU 0 with everything.
    """
    thr = np.asarray(thresholds, dtype=np.float64) * float(saliency.max())
    # All binarisations at once; only the component labelling needs a per-threshold call.
    masks = (saliency[None].astype(np.float64) > thr[:, None, None]).astype(np.uint8)
    out = np.full((len(thr), 4), -1.0)
    counts = masks.reshape(len(thr), -1).sum(1)
    prev_count, prev_box = -1, None
    for t in range(len(thr)):
        if counts[t] == 0:
            continue
        if counts[t] == prev_count:          # same pixel set as the previous (lower) threshold
            out[t] = prev_box
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(masks[t], connectivity=8)
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h = stats[k, :4]
        out[t] = prev_box = (x, y, x + w, y + h)
        prev_count = counts[t]
    return out


def box_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of (T, 4) predicted boxes with (N, 4) ground-truth boxes: (T, N); invalid (negative)
    predicted boxes give 0."""
    pred, gt = pred[:, None, :], gt[None, :, :]
    iw = np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0])
    ih = np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1])
    inter = iw.clip(0) * ih.clip(0)
    valid = pred[..., 2] >= 0
    area_p = np.where(valid, (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1]), 0)
    area_g = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    union = area_p + area_g - inter
    return np.where(valid & (union > 0), inter / np.maximum(union, 1e-12), 0.0)


def localization_ious(maps: np.ndarray, gt_boxes: Sequence[np.ndarray],
                      thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """(B, T): best IoU over each image's ground-truth boxes, per binarisation threshold."""
    out = np.zeros((len(maps), len(thresholds)))
    for i, (m, gt) in enumerate(zip(maps, gt_boxes)):
        if len(gt):
            out[i] = box_iou(largest_component_boxes(np.asarray(m), thresholds),
                             np.asarray(gt, dtype=np.float64)).max(1)
    return out


def threshold_index(thresholds: Sequence[float], t: float) -> int:
    idx = np.flatnonzero(np.isclose(np.asarray(thresholds), t))
    if not len(idx):
        raise ValueError(f"threshold {t} is not in the grid")
    return int(idx[0])


def localization_summary(ious: np.ndarray, correct_class: np.ndarray,
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         iou_threshold: float = 0.5, top1_threshold: float = 0.2) -> dict:
    """GT-known box accuracy at 0.2 (CAM) and 0.15 (Grad-CAM), MaxBoxAcc (Choe et al.: best over
    the grid) and the top-1 localization error (class right AND IoU >= 0.5, at ``top1_threshold``)."""
    hit = ious >= iou_threshold
    acc = hit.mean(0)
    best = int(np.argmax(acc))
    i_top1 = threshold_index(thresholds, top1_threshold)
    return {
        "gt_known@0.2": float(acc[threshold_index(thresholds, 0.2)]),
        "gt_known@0.15": float(acc[threshold_index(thresholds, 0.15)]),
        "max_box_acc": float(acc[best]),
        "max_box_acc_threshold": float(np.asarray(thresholds)[best]),
        "top1_loc_err": float(1.0 - (hit[:, i_top1] & np.asarray(correct_class, bool)).mean()),
        "top1_loc_threshold": float(top1_threshold),
        "box_acc_curve": acc.tolist(),
    }


# --- pointing game -----------------------------------------------------------------------------

def pointing_game(maps: np.ndarray, gt_boxes: Sequence[np.ndarray], tolerance: float = 15.0) -> np.ndarray:
    """(B,) bool: the map's maximum lies within ``tolerance`` px of a ground-truth box
    (Zhang et al. 2016)."""
    hits = np.zeros(len(maps), dtype=bool)
    for i, (m, gt) in enumerate(zip(maps, gt_boxes)):
        if not len(gt):
            continue
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        gt = np.asarray(gt, dtype=np.float64)
        dx = np.maximum.reduce([gt[:, 0] - x, np.zeros(len(gt)), x - gt[:, 2]])
        dy = np.maximum.reduce([gt[:, 1] - y, np.zeros(len(gt)), y - gt[:, 3]])
        hits[i] = bool((np.hypot(dx, dy) <= tolerance).any())
    return hits


# --- deletion / insertion (Petsiuk et al., RISE 2018) ------------------------------------------

SUBSTRATES = ("blur", "mean", "zero")


def substrate_of(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What removed pixels become, in the model's input space: a Gaussian blur (kernel 11,
    sigma 5, as in RISE), the image's per-channel mean, or 0 (= the normalisation mean colour
    for a normalised input)."""
    if kind == "blur":
        import torchvision.transforms.functional as TF
        return TF.gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "zero":
        return torch.zeros_like(images)
    raise ValueError(f"unknown substrate {kind!r}; use one of {SUBSTRATES}")


def pixel_ranks(maps: np.ndarray, seed: int = 0) -> torch.Tensor:
    """(B, H*W) rank of every pixel, most salient first; ties (flat zero regions of ReLU maps)
    are broken by a fixed random order rather than raster order, which would favour the top rows."""
    b, n = maps.shape[0], maps[0].size
    tie = np.random.default_rng(seed).random(n)
    ranks = np.empty((b, n), dtype=np.int64)
    for i in range(b):
        order = np.lexsort((tie, -np.asarray(maps[i], dtype=np.float64).ravel()))
        ranks[i, order] = np.arange(n)
    return torch.from_numpy(ranks)


@torch.no_grad()
def deletion_insertion_curves(model: torch.nn.Module, images: torch.Tensor, maps: np.ndarray,
                              classes: Sequence[int], *, n_steps: int = 16,
                              substrate: str = "blur", batch_size: int = 64,
                              modes: Sequence[str] = ("deletion", "insertion"),
                              ) -> dict[str, np.ndarray]:
    """Class probability (softmax) after each of ``n_steps`` steps of removing (deletion) or
    inserting into the substrate (insertion) pixels in the map's order.

    All steps of all images run as large forward batches. Returns {mode: (B, n_steps + 1)} and
    ``"fraction"``: (n_steps + 1,) fraction of pixels removed / inserted.
    """
    dev = next(model.parameters()).device
    images = images.to(dev)
    b, _, h, w = images.shape
    frac = np.linspace(0.0, 1.0, n_steps + 1)
    counts = torch.from_numpy(np.round(frac * h * w).astype(np.int64)).to(dev)
    ranks = pixel_ranks(maps).to(dev)
    base = substrate_of(images, substrate)
    cls = torch.as_tensor(list(classes), device=dev)
    out: dict[str, np.ndarray] = {"fraction": frac}
    # on a CPU, the forward in chunks whose tensors stay out of freshly faulted pages
    rows = model_rows(model, images[:1]) or batch_size
    s = n_steps + 1
    # Pairs (image, step) flattened into one index space, forwarded in chunks of batch_size.
    pair_img = torch.arange(b, device=dev).repeat_interleave(s)
    pair_step = torch.arange(s, device=dev).repeat(b)
    for mode in modes:
        if mode not in ("deletion", "insertion"):
            raise ValueError(f"unknown mode {mode!r}")
        probs = torch.empty(b * s, device=dev)
        for lo in range(0, b * s, batch_size):
            ii, ss = pair_img[lo:lo + batch_size], pair_step[lo:lo + batch_size]
            sel = (ranks[ii] < counts[ss][:, None]).view(-1, 1, h, w)   # pixels taken so far
            x, sub = images[ii], base[ii]
            batch = torch.where(sel, sub, x) if mode == "deletion" else torch.where(sel, x, sub)
            p = torch.softmax(run_in_chunks(lambda t: (model(t),), batch, rows)[0].float(), dim=1)
            probs[lo:lo + batch_size] = p.gather(1, cls[ii][:, None])[:, 0]
        out[mode] = probs.view(b, s).cpu().numpy()
    return out


def auc(curves: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Trapezoid area under each row of ``curves`` over ``fraction``."""
    trapezoid = getattr(np, "trapezoid", None) or np.trapz   # numpy < 2 names it trapz
    return trapezoid(curves, fraction, axis=-1)


# --- sanity check (Adebayo et al. 2018) --------------------------------------------------------

def top_blocks(model: torch.nn.Module) -> list[str]:
    """The model's blocks in forward order: children of top-level Sequential containers, other
    top-level children as they are; only blocks with parameters. For torchvision MobileNetV2:
    features.0 .. features.18, classifier.1; for ResNets: conv1, bn1, layer1.0 .. layer4.2, fc."""
    blocks = []
    for name, child in model.named_children():
        subs = (list(child.named_children()) if isinstance(child, torch.nn.Sequential)
                else [("", child)])
        for sub, mod in subs:
            if any(True for _ in mod.parameters()):
                blocks.append(f"{name}.{sub}" if sub else name)
    return blocks


def randomized_copy(model: torch.nn.Module, top: int | Sequence[str] = 4,
                    seed: int = 0) -> tuple[torch.nn.Module, list[str]]:
    """A copy of ``model`` with its top ``top`` blocks (or the named modules) re-initialised with
    their own ``reset_parameters`` (cascading randomization from the logits down)."""
    names = top_blocks(model)[-top:] if isinstance(top, int) else list(top)
    rnd = copy.deepcopy(model).eval()
    mods = dict(rnd.named_modules())
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            if name not in mods:
                raise KeyError(f"no module {name!r} in the model")
            for m in mods[name].modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
    finally:
        torch.random.set_rng_state(gen_state)
    # Marks the copy, so map functions that check which model they explain (CHIP's importance
    # is tied to the trained weights) know this mismatch is the point of the test.
    rnd.chip_fast_randomized_blocks = names
    return rnd, names


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of rows (ties get average ranks); NaN for a
    constant row."""
    from scipy.stats import rankdata
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / den, np.nan)
