"""``evaluate``: every method scored on the same images in one run (the ``chip-fast evaluate``
subcommand is ``chip_fast.cli.evaluate``).

Owns running the methods and writing results; the metrics are ``metrics``' and the maps the
methods' own."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from . import wsol
from ..data.sources import ImageError
from ..util.atomic import atomic_write, atomic_write_text
from ..util.progress import Progress
from .dataset import LocSample

from .peers import MapFn


@dataclass
class EvalSettings:
    """What ``evaluate`` measures and how; recorded in results.json."""
    batch_size: int = 32                 # images per method call
    thresholds: list[float] = field(default_factory=lambda: M.DEFAULT_THRESHOLDS.tolist())
    iou_threshold: float = 0.5
    top1_threshold: float = 0.2          # the CAM paper's threshold for top-1 loc error
    v2_step: float = 0.01                # MaxBoxAccV2's grid, np.arange(0, 1, v2_step)
    pointing_tolerance: float = 15.0     # px, Zhang et al. 2016
    faithfulness_limit: int | None = 50  # first N images get deletion/insertion (0: none)
    faithfulness_steps: int = 16
    substrate: str = "blur"              # blur | mean | zero
    faithfulness_batch: int = 64         # forward batch of the (image, step) pairs
    sanity_limit: int | None = 50        # first N images get the randomization check (0: none)
    sanity_top_blocks: int = 4           # re-initialised blocks, from the logits down
    sanity_seed: int = 0


def _check_maps(maps: np.ndarray, name: str, n: int, size: tuple[int, int]) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (n, *size):
        raise ValueError(f"method {name!r} returned maps of shape {maps.shape}, expected "
                         f"{(n, *size)}")
    if not np.isfinite(maps).all():
        raise ValueError(f"method {name!r} returned non-finite map values")
    return maps


def check_settings(s: EvalSettings) -> None:
    """Refuse settings that would divide by zero or score nothing while looking like a result,
    before any image is read: a ValueError naming the setting and what it may be."""
    def whole(name: str, value, least: int, none_ok: bool = False) -> None:
        if value is None and none_ok:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"EvalSettings.{name} must be a whole number, {least} or more; "
                             f"got {value!r}")
    whole("batch_size", s.batch_size, 1)
    whole("faithfulness_steps", s.faithfulness_steps, 1)
    whole("faithfulness_batch", s.faithfulness_batch, 1)
    whole("faithfulness_limit", s.faithfulness_limit, 0, none_ok=True)
    whole("sanity_limit", s.sanity_limit, 0, none_ok=True)
    if not 0 < s.v2_step <= 1:
        raise ValueError(f"EvalSettings.v2_step is a fraction of the map's maximum, more than 0 "
                         f"and at most 1; got {s.v2_step!r}")
    if not len(s.thresholds):
        raise ValueError("EvalSettings.thresholds is empty: give the box thresholds to search")


def _batches(dataset: Sequence[LocSample], batch_size: int, on_error: str,
             skipped: list[tuple[str, str]], log: Callable[[str], None]):
    """(index of the batch's first image, images read, their tensors, labels, boxes and ids);
    an image that cannot be decoded (ImageError, which names the file) is logged and left out
    (``on_error="skip"``; a batch may then be smaller, or empty) or stops the run."""
    for lo in range(0, len(dataset), batch_size):
        hi = min(lo + batch_size, len(dataset))
        items = []
        for i in range(lo, hi):
            try:
                items.append(dataset[i])
            except ImageError as e:
                if on_error == "raise":
                    raise
                paths = getattr(dataset, "image_paths", None)
                skipped.append((str(paths[i]) if paths is not None else f"image #{i}", str(e)))
                log(f"[evaluate] skipped: {e}")
        yield (lo, hi - lo, torch.stack([s.image for s in items]) if items else None,
               [s.label for s in items], [s.boxes for s in items], [s.image_id for s in items])


def log_stderr(line: str) -> None:
    """Where the evaluation's progress and notes go: stderr, at once (stdout is the table)."""
    print(line, file=sys.stderr, flush=True)


def evaluate(model: torch.nn.Module, methods: Mapping[str, MapFn], dataset: Sequence[LocSample],
             out_dir: str | Path, settings: EvalSettings | None = None, *, plots: bool = True,
             log: Callable[[str], None] = log_stderr, on_error: str = "skip") -> dict:
    """Score every map function of ``methods`` on the same images of ``dataset``.

    ``methods`` maps a display name to ``(model, images, classes) -> (B, H, W)`` in [0, 1]; a
    ``layer`` attribute on the function is reported. Writes ``results.json``, ``results.md``
    and (with matplotlib) plots to ``out_dir``; returns the results dict. A method that raises
    is reported with its error and skipped, so one bad peer does not lose the run. ``log``
    gets a line per batch with the time left. An image that cannot be decoded is named in
    ``log`` and left out (``on_error="skip"``; listed in the results as ``skipped_images``) or
    stops the run (``"raise"``). Settings that cannot work are refused before any image is read.
    """
    s = settings or EvalSettings()
    check_settings(s)
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    dev = next(model.parameters()).device
    thresholds = np.asarray(s.thresholds, dtype=np.float64)
    n_faith = len(dataset) if s.faithfulness_limit is None else min(s.faithfulness_limit, len(dataset))
    n_sanity = len(dataset) if s.sanity_limit is None else min(s.sanity_limit, len(dataset))
    rnd_model, rnd_blocks = (M.randomized_copy(model, s.sanity_top_blocks, s.sanity_seed)
                             if n_sanity else (None, []))

    acc = {name: {"ious": [], "v2": [], "point": [], "del": [], "ins": [], "rho": [],
                  "seconds": 0.0, "error": None, "sanity_error": None, "randomized_fn": None}
           for name in methods}
    correct, ids, fraction, skipped = [], [], None, []
    n_batches = -(-len(dataset) // s.batch_size)
    progress = Progress(len(dataset), "images", write=lambda line: log(f"[evaluate] {line}"))
    batches = _batches(dataset, s.batch_size, on_error, skipped, log)
    for b, (_lo, n_read, x, labels, boxes, batch_ids) in enumerate(batches, 1):
        if x is None:   # every image of the batch was skipped (named above)
            progress.step(f"batch {b}/{n_batches}: no image could be decoded", n_read)
            continue
        x = x.to(dev)
        with torch.no_grad():
            correct += (model(x).argmax(1).cpu() == torch.tensor(labels)).tolist()
        # the first n_faith / n_sanity images scored (not read: skipped ones do not count)
        done = len(ids)
        ids += batch_ids
        n_f, n_s = max(0, min(len(x), n_faith - done)), max(0, min(len(x), n_sanity - done))
        for name, fn in methods.items():
            t0 = time.perf_counter()
            f = _score_batch(name, fn, acc[name], model, rnd_model, x, labels, boxes, n_f, n_s,
                             s, thresholds, log)
            fraction = fraction if f is None else f
            if b == 1:   # a first batch can take minutes: say what each method costs
                log(f"[evaluate] batch 1/{n_batches}: {name} scored in "
                    f"{time.perf_counter() - t0:.1f} s")
        progress.step(f"batch {b}/{n_batches} scored by {len(methods)} method(s)", n_read)

    if skipped:
        log(f"[evaluate] {len(skipped)} of {len(dataset)} image(s) could not be decoded and "
            f"were skipped (named above)")
    correct_arr = np.asarray(correct, bool)
    results = {
        "n_images": len(ids), "top1_acc": float(correct_arr.mean()) if len(ids) else None,
        "settings": asdict(s), "sanity_randomized_blocks": rnd_blocks,
        "faithfulness_images": min(n_faith, len(ids)), "sanity_images": min(n_sanity, len(ids)),
        "skipped_images": [{"image": where, "error": why} for where, why in skipped],
        "fraction": None if fraction is None else fraction.tolist(),
        "image_ids": ids, "top1_correct": correct_arr.tolist(),   # per photo, for compare.py
        "methods": {name: _summarise(name, fn, acc[name], correct_arr, thresholds, fraction, s)
                    for name, fn in methods.items()},
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1))
    atomic_write_text(out_dir / "results.md", markdown_table(results))
    if plots:
        write_plots(results, out_dir, log)
    return results


def _score_batch(name: str, fn: MapFn, a: dict, model, rnd_model, x: torch.Tensor,
                 labels: list[int], boxes: list[np.ndarray], n_f: int, n_s: int,
                 s: EvalSettings, thresholds: np.ndarray, log: Callable[[str], None]):
    """Add one batch's scores of one method to its accumulator ``a``; returns the deletion
    curves' fractions when it computed them. A method that raises is marked and skipped."""
    if a["error"]:
        return None
    fraction = None
    try:
        t0 = time.perf_counter()
        maps = fn(model, x, labels)
        a["seconds"] += time.perf_counter() - t0
        maps = _check_maps(maps, name, len(x), tuple(x.shape[-2:]))
        a["ious"].append(M.localization_ious(maps, boxes, thresholds))
        a["v2"].append(wsol.multi_contour_ious(maps, boxes, wsol.v2_thresholds(s.v2_step)))
        a["point"].append(M.pointing_game(maps, boxes, s.pointing_tolerance))
        if n_f:
            c = M.deletion_insertion_curves(
                model, x[:n_f], maps[:n_f], labels[:n_f], n_steps=s.faithfulness_steps,
                substrate=s.substrate, batch_size=s.faithfulness_batch)
            a["del"].append(c["deletion"])
            a["ins"].append(c["insertion"])
            fraction = c["fraction"]
    except Exception as e:  # noqa: BLE001 - reported in the results, run goes on
        a["error"] = f"{type(e).__name__}: {e}"
        log(f"[evaluate] {name}: skipped ({a['error']})")
        return None
    if n_s and not a["sanity_error"]:
        try:
            if a["randomized_fn"] is None:   # CHIP re-distils here, once per method
                a["randomized_fn"] = getattr(fn, "for_randomized", lambda _m: fn)(rnd_model)
            rmaps = _check_maps(a["randomized_fn"](rnd_model, x[:n_s], labels[:n_s]), name,
                                n_s, tuple(x.shape[-2:]))
            a["rho"].append(M.spearman_rows(maps[:n_s], rmaps))
        except Exception as e:  # noqa: BLE001 - the other metrics stand
            a["sanity_error"] = f"{type(e).__name__}: {e}"
            log(f"[evaluate] {name}: no sanity check ({a['sanity_error']})")
    return fraction


def _summarise(name: str, fn: MapFn, a: dict, correct: np.ndarray, thresholds: np.ndarray,
               fraction, s: EvalSettings) -> dict:
    """One method's row of the results from its accumulated scores."""
    r: dict = {"method": getattr(fn, "method", name), "layer": getattr(fn, "layer", "")}
    if a["error"] or not a["ious"]:
        r["error"] = a["error"] or "no images"
        return r
    ious = np.concatenate(a["ious"])
    r.update(M.localization_summary(ious, correct, thresholds, s.iou_threshold,
                                    s.top1_threshold))
    r.update(wsol.max_box_acc_v2(np.concatenate(a["v2"]), wsol.v2_thresholds(s.v2_step)))
    r["pointing"] = float(np.concatenate(a["point"]).mean())
    r["ms_per_image"] = 1000.0 * a["seconds"] / len(ious)
    if a["del"]:
        d, i = np.concatenate(a["del"]), np.concatenate(a["ins"])
        r["deletion_auc"] = float(M.auc(d, fraction).mean())
        r["insertion_auc"] = float(M.auc(i, fraction).mean())
        r["deletion_curve"], r["insertion_curve"] = d.mean(0).tolist(), i.mean(0).tolist()
    if a["sanity_error"]:
        r["sanity_error"] = a["sanity_error"]
    elif a["rho"]:
        rho = np.concatenate(a["rho"])
        r["sanity_spearman"] = float(np.nanmean(rho)) if np.isfinite(rho).any() else None
        if getattr(fn, "sanity", None):   # CHIP: was the importance re-distilled or kept?
            r["sanity_importance"] = fn.sanity
    r["iou_at_top1_threshold"] = ious[:, M.threshold_index(thresholds, s.top1_threshold)].tolist()
    return r


COLUMNS = [("layer", "layer", "{}"), ("GT-known@0.2", "gt_known@0.2", "{:.3f}"),
           ("GT-known@0.15", "gt_known@0.15", "{:.3f}"), ("MaxBoxAcc", "max_box_acc", "{:.3f}"),
           ("MaxBoxAccV2", "max_box_acc_v2", "{:.3f}"),
           ("top-1 loc err", "top1_loc_err", "{:.3f}"), ("pointing", "pointing", "{:.3f}"),
           ("deletion AUC", "deletion_auc", "{:.3f}"), ("insertion AUC", "insertion_auc", "{:.3f}"),
           ("sanity rho", "sanity_spearman", "{:.3f}"), ("ms/image", "ms_per_image", "{:.1f}")]


def markdown_table(results: dict) -> str:
    s = results["settings"]
    top1 = "-" if results["top1_acc"] is None else f"{results['top1_acc']:.3f}"
    lines = [f"{results['n_images']} images, top-1 accuracy {top1}; "
             f"box accuracy at IoU >= {s['iou_threshold']}; MaxBoxAcc over "
             f"{len(s['thresholds'])} thresholds (largest component); MaxBoxAccV2 as "
             f"clovaai/wsolevaluation (every contour, IoU 0.3/0.5/0.7, thresholds every "
             f"{s.get('v2_step', 0.01)}); deletion/insertion on "
             f"{results['faithfulness_images']} images, {s['faithfulness_steps']} steps, "
             f"substrate {s['substrate']}; sanity rho (Spearman, original vs "
             f"{', '.join(results['sanity_randomized_blocks']) or '-'} re-initialised) on "
             f"{results['sanity_images']} images."
             + _skipped_note(results.get("skipped_images") or []), "",
             "| method | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for name, r in results["methods"].items():
        if "error" in r:
            lines.append(f"| {name} | {r.get('layer', '')} | error: {r['error']} |"
                         + " |" * (len(COLUMNS) - 2))
            continue
        cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for _, k, fmt in COLUMNS]
        if r.get("sanity_importance") == "importance kept":
            cells[-2] += " †"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(r.get("sanity_importance") == "importance kept" for r in results["methods"].values()):
        lines += ["", "† the trained model's importance kept on the randomised copy: only the "
                      "map step is checked (re-distil it for the whole method: --sanity-data)."]
    return "\n".join(lines) + "\n"


def _skipped_note(skipped: list[dict]) -> str:
    """The sentence of the table's header that names the images left out, if any."""
    if not skipped:
        return ""
    shown = ", ".join(item["image"] for item in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f" {len(skipped)} image(s) could not be decoded and were skipped: {shown}{more}."


def write_plots(results: dict, out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Box accuracy vs threshold, and mean deletion / insertion curves (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("[evaluate] matplotlib missing: no plots (pip install chip-fast[eval])")
        return
    ok = {n: r for n, r in results["methods"].items() if "error" not in r}
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in ok.items():
        ax.plot(results["settings"]["thresholds"], r["box_acc_curve"], label=n)
    ax.set(xlabel="threshold (fraction of map max)", ylabel="GT-known box accuracy",
           title="Box accuracy vs threshold")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out_dir / "box_accuracy.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    if results["fraction"] is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, title in zip(axes, ("deletion_curve", "insertion_curve"),
                                  ("Deletion", "Insertion")):
            for n, r in ok.items():
                if key in r:
                    ax.plot(results["fraction"], r[key], label=n)
            ax.set(xlabel="fraction of pixels", ylabel="class probability", title=title)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        atomic_write(out_dir / "deletion_insertion.png",
                     lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
