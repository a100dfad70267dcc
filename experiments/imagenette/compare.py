"""How sure are the table's leads? Refined CHIP against every other method of a table run,
photo by photo (``chip_fast.evaluation.compare``: paired bootstrap, 95% intervals), per half.

    python -m experiments.imagenette.compare --out experiments/imagenette/results/maps_v6
        [--arch mobilenet_v2|efficientnet_lite0]

Reads ``<out>/<half>/results.json`` of ``experiments.imagenette.table`` and writes
``<out>/differences.md``. Results written before ``evaluate`` kept the model's per-photo top-1
correctness get it from one forward pass over the half (the model and photos of ``--arch``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from chip_fast.evaluation.compare import compare_to, comparison_table

from experiments.imagenette.common import ARCHS, arch_setup, halves

REFERENCE = "Refined CHIP (defaults)"


def top1_correct(model: torch.nn.Module, half, image_ids: list[str]) -> list[bool]:
    """The model's top-1 right or wrong on each photo of ``half``, checked to be the photos
    (in the order) the results scored."""
    samples = [half[i] for i in range(len(half))]
    if [s.image_id for s in samples] != list(image_ids):
        raise ValueError("the half's photos are not those the results scored")
    with torch.no_grad():
        return [int(model(s.image[None]).argmax(1)) == s.label for s in samples]


def write_comparisons(out: Path, results: dict[str, dict], reference: str = REFERENCE,
                      arch: str | None = None) -> str:
    """``differences.md`` in ``out`` from evaluate's results by half name; returns its text."""
    parts = []
    for name, res in results.items():
        if "top1_correct" not in res and arch is not None:
            model, val, _ = arch_setup(arch)
            res = {**res, "top1_correct": top1_correct(model.eval(), halves(val)[name],
                                                       res["image_ids"])}
        parts.append(f"### {name} half ({res['n_images']} photos)\n\n"
                     + comparison_table(compare_to(res, reference), reference))
    text = "\n".join(parts)
    (out / "differences.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.imagenette.compare")
    ap.add_argument("--out", required=True, help="a table run's folder")
    ap.add_argument("--arch", choices=ARCHS, default=ARCHS[0])
    args = ap.parse_args()
    out = Path(args.out)
    results = {h: json.loads((out / h / "results.json").read_text())
               for h in ("selection", "confirmation") if (out / h / "results.json").is_file()}
    if not results:
        raise SystemExit(f"no <half>/results.json under {out}: run experiments.imagenette.table")
    print(write_comparisons(out, results, arch=args.arch))


if __name__ == "__main__":
    main()
