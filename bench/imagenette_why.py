"""What Layer-CAM at the 14x14 layer has that class-level channel importance cannot have.

    python bench/imagenette_why.py --importance bench/results/imagenette/mnv2_seed0.chip

On a half of imagenette/val-dev (default: the selection half), at MobileNetV2's
features.14.conv.0, maps that share the activations A_j(x) and differ only in the weights:

  Layer-CAM                        sum_j relu(g_j(x, h, w)) A_j(x, h, w)   per image and location
  Layer-CAM, per image             sum_j mean_hw relu(g_j(x)) A_j(x)       per image, no location
  Layer-CAM, per class             sum_j E_class[relu(g_j)] A_j(x)         per class: CHIP's kind
  CHIP                             sum_j max(W[c, j], 0) A_j(x)            distilled, per class
  CHIP, gated by g > 0             sum_j max(W[c, j], 0) A_j(x) [g_j(x, h, w) > 0]

g_j = d logit_c / d A_j is the gradient of the image's class logit. Each map also multiplied by
the CHIP map at features.18 (Refined). If Layer-CAM's advantage came from better channel weights,
its per-class average would keep it; if it comes from per-location gradients, it would not.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import chip_fast
from chip_fast.ops.class_maps import upsample_normalize_reference
from chip_fast.models.split import split_model
from imagenette_common import DEEP, MID, ROOT, halves, mobilenet_v2
from imagenette_score import Half, _norm


def activations_and_gradients(model, half: Half) -> tuple[torch.Tensor, torch.Tensor]:
    """A (N, K, 14, 14) at the mid layer and the gradient of each photo's class logit there."""
    split = split_model(model, [MID])
    labels = torch.tensor(half.labels)
    acts, grads = [], []
    for i in range(0, len(half.x), 16):
        with torch.no_grad():
            out = split.run_prefix(half.x[i:i + 16])
        a = split.activation(out, MID).clone().requires_grad_(True)
        logits = split.run_tail(MID, a, out, torch.arange(len(a)))
        g, = torch.autograd.grad(logits.gather(1, labels[i:i + 16, None]).sum(), a)
        acts.append(a.detach())
        grads.append(g)
    return torch.cat(acts), torch.cat(grads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--importance", default=str(ROOT / "bench" / "results" / "imagenette"
                                                / "mnv2_seed0.chip"))
    ap.add_argument("--half", default="selection", choices=["selection", "confirmation"])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "imagenette_why"))
    args = ap.parse_args()
    model = mobilenet_v2()
    half = Half(model, halves()[args.half])
    imp = chip_fast.load_importance(args.importance)
    labels = torch.tensor(half.labels)
    a, g = activations_and_gradients(model, half)
    deep = torch.cat([chip_fast.explain(model, imp, half.x[i:i + 32], half.labels[i:i + 32],
                                        layers=[DEEP]) for i in range(0, len(half.x), 32)])
    per_class = torch.zeros(imp.num_classes, a.shape[1])
    for c in labels.unique():
        per_class[c] = g[labels == c].clamp(min=0).mean((0, 2, 3))
    w = imp.weights[MID].clamp(min=0)[labels]

    def up(m: torch.Tensor) -> torch.Tensor:
        return upsample_normalize_reference(m, tuple(half.x.shape[-2:]))

    maps = {
        "Layer-CAM (per image and location)": up((g.clamp(min=0) * a).sum(1)),
        "Layer-CAM weights, per image (no location)": up(
            torch.einsum("pk,pkhw->phw", g.clamp(min=0).mean((2, 3)), a)),
        "Layer-CAM weights, per class (no image, no location)": up(
            torch.einsum("pk,pkhw->phw", per_class[labels], a)),
        "CHIP (distilled, per class)": up(torch.einsum("pk,pkhw->phw", w, a)),
        "CHIP, gated by the image's gradient > 0": up(
            torch.einsum("pk,pkhw->phw", w, a * (g > 0))),
    }
    rows = {}
    for name, m in maps.items():
        rows[name] = {"alone": half.score(m.numpy()),
                      "x CHIP @ features.18": half.score(_norm(m * deep).numpy())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.half}.json").write_text(json.dumps(rows, indent=1))
    lines = [f"{len(half.labels)} photos ({args.half} half), maps at {MID}; "
             "GT-known@0.2 / MaxBoxAcc / top-1 loc err", "",
             "| weights | alone | x CHIP @ features.18 |", "|---|---|---|"]
    for name, r in rows.items():
        cells = [" / ".join(f"{r[k][c]:.3f}" for c in ("gt_known@0.2", "max_box_acc",
                                                        "top1_loc_err"))
                 for k in ("alone", "x CHIP @ features.18")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    (out / f"{args.half}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
