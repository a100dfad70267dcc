"""What CHIP at a linear head converges to with unlimited samples, scored against CAM.

    python -m experiments.chip_limit [--limit 630] [--faithfulness 50]
        [--out experiments/chip_limit/results]

At MobileNetV2's features.18 the tail is global average pooling + a linear layer, so the class-c
logit of a perturbed network is exactly linear in the masks:

    y = b_c + sum_k W_fc[c,k] (z_k abar_k(x) + (1 - z_k) fbar_k),

abar_k(x) the spatial mean of channel k on the view x, fbar_k the spatial mean of its fill (mean
mu_k). With unlimited samples G -> p(1-p) I and r_c -> p(1-p) W_fc[c] * d_c, where
d_c = E_views[abar(x)] - mu is the class's mean channel deviation over its distillation views,
so the Lasso solution is the soft-threshold of W_fc[c] * d_c at alpha * max|.|. This script
builds that limit for every class (same views, fill statistics and alpha as distill_all_classes
with augment=8), and scores its maps, the same with positive weights, and W_fc itself (which is
CAM: a check that the evaluation reproduces the CAM peer), on the same photos. With
fill="zero" the fill's mean is 0 and d_c becomes E_views[abar(x)]: scored too.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast import DistillSettings, Importance
from chip_fast.distill.job import DistillJob
from chip_fast.evaluation import EvalSettings, chip_method, evaluate, load_val_dir
from chip_fast.models.fingerprint import model_fingerprint
from chip_fast.models import load_model

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"
LAYER = "features.18"


def class_deviations(model: torch.nn.Module, classes: list[int]
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """d_c and mu_c = E_views[abar] for every class (rows of (num_classes, K) float64
    tensors), and num_classes. With fill="zero" the fill's mean is 0, so d_c becomes mu_c."""
    # Noise fill, as when the docs' table was made: d_c needs the fill mean mu, which the
    # default zero fill has no pass to measure.
    job = DistillJob(model, chip_fast.ImageFolderSource(DATA / "imagenet-sample" / "train"),
                     [LAYER], DistillSettings(samples_per_class=2048, augment=8, fill="noise"),
                     classes)
    try:
        with torch.inference_mode():
            job.measure_fill_statistics()
            d = torch.zeros(job.plan.num_classes, job.plan.channels[LAYER], dtype=torch.float64)
            m = torch.zeros_like(d)
            runner = job.runner
            for c in classes:
                views = runner.load_views([(c, v) for v in range(job.plan.views.views[c])])
                a = runner.split.activation(runner.prefix(views), LAYER).double()
                m[c] = a.mean((0, 2, 3))
                d[c] = m[c] - job.state.mu[LAYER].double()
    finally:
        job.close()
    return d, m, job.plan.num_classes


def limit_importance(model: torch.nn.Module, classes: list[int], coef: torch.Tensor,
                     alpha: float) -> Importance:
    """The Lasso limit soft(coef, alpha * max|coef|) per class, as an importance."""
    weights = torch.zeros(coef.shape)
    for c in classes:
        w = coef[c].sign() * (coef[c].abs() - alpha * coef[c].abs().max()).clamp(min=0)
        weights[c] = w.float()
    return Importance(weights={LAYER: weights}, classes=classes, num_classes=coef.shape[0],
                      fingerprint=model_fingerprint(model), settings={"limit": True, "alpha": alpha})


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.chip_limit")
    ap.add_argument("--limit", type=int, default=630)
    ap.add_argument("--faithfulness", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    dataset = load_val_dir(DATA / "imagenet-val-dev", limit=args.limit)
    classes = sorted(set(dataset.labels))
    t0 = time.perf_counter()
    d, m, num_classes = class_deviations(model, classes)
    w_fc = model.classifier[1].weight.detach().double()
    # Maps with signed weights, ReLU(sum_k W A_k), except where "positive" says max(W, 0).
    methods = {"W_fc (= CAM, check)": chip_method(
        limit_importance(model, classes, w_fc, 0.0), [LAYER], positive=False)}
    for alpha in (0.0, 0.01, 0.1):
        imp = limit_importance(model, classes, w_fc * d, alpha)
        for positive in (False, True):
            name = f"CHIP limit, alpha {alpha}{', positive' if positive else ''}"
            methods[name] = chip_method(imp, [LAYER], positive=positive)
    methods["CHIP limit, fill zero, alpha 0.1, positive"] = chip_method(
        limit_importance(model, classes, w_fc * m, 0.1), [LAYER])
    out = Path(args.out)
    evaluate(model, methods, dataset, out,
             EvalSettings(faithfulness_limit=args.faithfulness, sanity_limit=0))
    (out / "run.json").write_text(json.dumps({
        "photos": len(dataset), "classes": len(classes), "layer": LAYER,
        "seconds": time.perf_counter() - t0, "device": f"CPU, {torch.get_num_threads()} threads"},
        indent=2))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
