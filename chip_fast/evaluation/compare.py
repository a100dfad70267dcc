"""Is one method's box accuracy really above another's? A paired bootstrap over the photos.

Every method of an ``evaluate`` run is scored on the same photos, so two methods' per-photo
outcomes are compared photo by photo: the difference of their means, and the interval in which
95% of the means of photos resampled with replacement fall. On a hundred-odd photos one photo
is nearly a hundredth of accuracy, so a lead of a few hundredths is often inside that interval;
a table should say so rather than bold it.

Per photo: GT-known@0.2 is a box at the 0.2 threshold with IoU >= the run's IoU threshold;
top-1 localization additionally needs the model's top-1 class right (``top1_correct`` of the
results; a loc *accuracy*, 1 - the error, so for both metrics higher is better).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

METRICS = ("gt_known@0.2", "top1_loc_acc")


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, draws: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` (per-photo outcomes of two methods on the same photos), its
    ``level`` percentile interval over ``draws`` resamplings of the photos, and the share of
    resamplings in which ``a`` does not lead (a one-sided bootstrap p)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired outcomes need two equal non-empty 1-D arrays, got shapes "
                         f"{a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(draws, len(d)))
    means = d[idx].mean(1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi),
            "p_not_ahead": float((means <= 0).mean()), "photos": int(len(d))}


def per_photo(results: Mapping, name: str) -> dict[str, np.ndarray]:
    """The per-photo outcomes of method ``name`` in ``evaluate``'s results (``METRICS``; the
    top-1 one only where the results hold the model's per-photo correctness)."""
    r = results["methods"][name]
    if results["settings"].get("top1_threshold", 0.2) != 0.2:   # the per-photo IoUs' threshold
        raise ValueError(f"the results keep per-photo IoUs at threshold "
                         f"{results['settings']['top1_threshold']}, not GT-known@0.2's 0.2")
    if "error" in r:
        raise ValueError(f"method {name!r} has no scores: {r['error']}")
    hit = np.asarray(r["iou_at_top1_threshold"], np.float64) >= results["settings"]["iou_threshold"]
    out = {"gt_known@0.2": hit.astype(np.float64)}
    if "top1_correct" in results:
        out["top1_loc_acc"] = (hit & np.asarray(results["top1_correct"], bool)).astype(np.float64)
    return out


def compare_to(results: Mapping, reference: str, *, draws: int = 10000, seed: int = 0
               ) -> dict[str, dict[str, dict[str, float]]]:
    """``{other method: {metric: paired_bootstrap(reference, other)}}`` for every other method
    of ``results`` that has scores (a positive ``diff`` means ``reference`` is ahead)."""
    ref = per_photo(results, reference)
    out = {}
    for name, r in results["methods"].items():
        if name == reference or "error" in r:
            continue
        other = per_photo(results, name)
        out[name] = {m: paired_bootstrap(ref[m], other[m], draws=draws, seed=seed)
                     for m in METRICS if m in ref and m in other}
    return out


def comparison_table(comparisons: Mapping[str, Mapping], reference: str) -> str:
    """Markdown: one row per other method, ``diff [lo, hi]`` per metric, ``*`` where the
    interval excludes 0."""
    metrics = [m for m in METRICS if any(m in c for c in comparisons.values())]
    lines = [f"{reference} minus each method, paired bootstrap over the photos (95% interval; "
             f"* where it excludes 0):", "",
             "| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, c in comparisons.items():
        cells = []
        for m in metrics:
            if m not in c:
                cells.append("-")
                continue
            s = c[m]
            star = "*" if s["lo"] > 0 or s["hi"] < 0 else ""
            cells.append(f"{s['diff']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}]{star}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
