"""``chip-fast evaluate``: CHIP and the peer methods scored on the same ILSVRC-format photos.

Every check comes first (files, methods, layers, classes), then the run, with a progress line
per batch on stderr and the table on stdout; the scoring is ``chip_fast.evaluation``'s."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import MODES
from .args import add_command, add_model_args, model_of, parse_layers, whole


def threshold_step(text: str) -> float:
    """--threshold-step: a fraction of the map's maximum in (0, 1]."""
    try:
        step = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < step <= 1:
        raise argparse.ArgumentTypeError(f"{text}: the step is a fraction of the map's maximum, "
                                         "more than 0 and at most 1 (e.g. 0.01)")
    return step


def configure(sub) -> None:
    p = add_command(sub, "evaluate", "score CHIP and peer methods on ILSVRC-format data")
    try:
        from ..evaluation.methods import DEFAULT_METHODS, METHOD_NAMES
        from ..evaluation.metrics import SUBSTRATES
    except ImportError as exc:  # the evaluation extra is optional
        message = str(exc)
        p.set_defaults(func=lambda _a: sys.exit(f"chip-fast evaluate needs: pip install "
                                                 f"'chip-fast[eval]' ({message})"))
        return
    add_model_args(p)
    p.add_argument("--importance", help="chip_fast importance file (adds the CHIP methods)")
    p.add_argument("--val-dir", required=True,
                   help="folder with images/ and LOC_val_solution.csv (or an XML folder) and "
                        "LOC_synset_mapping.txt")
    p.add_argument("--xml-dir", help="per-image Pascal-VOC XML annotations (instead of CSV)")
    p.add_argument("--synsets", help="LOC_synset_mapping.txt (default: in --val-dir)")
    p.add_argument("--preprocess", choices=MODES, default="resize",
                   help="how photos become inputs (resize: the pre-scaled val photos keep "
                        "every box)")
    p.add_argument("--size", type=whole(1), default=224, help="input size in pixels")
    p.add_argument("--limit", type=whole(1), help="first N images only")
    p.add_argument("--methods", help=f"comma list of {', '.join(METHOD_NAMES)} (default: "
                                     f"{DEFAULT_METHODS}; the chip ones with --importance)")
    p.add_argument("--only-distilled", action="store_true",
                   help="score every method on the images whose class the importance holds "
                        "(default: refuse a file that lacks some images' classes)")
    p.add_argument("--layers", help="comma list of layer names (default: the importance's "
                                    "layers, else the last conv stage); the *-refined peers "
                                    "(RefineCAM) multiply the maps of all of them")
    p.add_argument("--threshold-step", type=threshold_step, default=0.01,
                   help="grid step of the MaxBoxAcc and MaxBoxAccV2 threshold searches "
                        "(Choe et al.: 0.01)")
    p.add_argument("--faithfulness-limit", type=whole(0), default=50,
                   help="first N images get deletion/insertion curves (0: none)")
    p.add_argument("--steps", type=whole(1), default=16, help="deletion/insertion steps")
    p.add_argument("--substrate", choices=SUBSTRATES, default="blur",
                   help="what deleted pixels become")
    p.add_argument("--sanity-limit", type=whole(0), default=50,
                   help="first N images get the randomisation check (0: none)")
    p.add_argument("--sanity-data", help="photos (train/<wnid>/ folders) the importance was "
                                         "distilled from: the CHIP sanity check re-distils the "
                                         "randomised model from them with the file's settings "
                                         "(default: the trained importance is kept, which "
                                         "checks the map step only)")
    p.add_argument("--batch-size", type=whole(1), default=32, help="images per progress step")
    p.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    p.add_argument("--out", default="out/evaluate", help="output folder")
    p.add_argument("--no-plots", action="store_true", help="write no matplotlib plots")
    p.set_defaults(func=run)


def _layers(args: argparse.Namespace, model: torch.nn.Module, importance) -> list[str]:
    from ..evaluation.peers import find_gap_head
    from ..models.layers import check_layers
    layers = parse_layers(args.layers)
    if layers is None and importance is not None:
        layers = list(importance.layers)
    elif layers is None:
        stage = find_gap_head(model)[0]
        children = [n for n, _ in dict(model.named_modules())[stage].named_children()]
        layers = [f"{stage}.{children[-1]}" if children else stage]
    return check_layers(model, layers)   # the peers hook modules: a wrong name fails now


def _redistill(args: argparse.Namespace, importance):
    if not args.sanity_data:
        return None
    if importance is None:
        raise ValueError("--sanity-data re-distils CHIP's importance, so it needs --importance")
    if not Path(args.sanity_data).is_dir():
        raise ValueError(f"--sanity-data {args.sanity_data}: no such folder")
    from ..evaluation.sanity import Redistill
    return Redistill(importance, args.sanity_data)   # refuses a file whose run it cannot repeat


def run(args: argparse.Namespace) -> int:
    from ..evaluation.dataset import load_val_dir
    from ..evaluation.methods import (build_methods, check_chip_layers, check_refined_peers,
                                      distilled_images, requested_methods)
    from ..evaluation.runner import EvalSettings, evaluate, log_stderr as log
    from ..importance.core import load_importance
    from ..models.loading import preprocess_of
    if not Path(args.val_dir).is_dir():   # before the model loads
        raise ValueError(f"--val-dir {args.val_dir}: " + (
            "no such folder" if not Path(args.val_dir).exists() else
            "a file, not a folder (give the folder that holds images/ and the annotations)"))
    importance = load_importance(args.importance) if args.importance else None
    names = requested_methods(args.methods, importance, log)
    model = model_of(args)
    dataset = load_val_dir(args.val_dir, xml_dir=args.xml_dir, synsets=args.synsets,
                           limit=args.limit, preprocess=preprocess_of(
                               model, mode=args.preprocess, size=args.size))
    layers = _layers(args, model, importance)
    names = check_refined_peers(names, layers, asked=args.methods is not None)
    if any(n.startswith("chip") for n in names):
        importance.check_model(model)
        check_chip_layers(names, layers, importance, log)
        dataset = distilled_images(dataset, importance, args.importance, args.only_distilled, log)
    methods = build_methods(model, names, layers, importance, log,
                            redistill=_redistill(args, importance))
    steps = int(round(1 / args.threshold_step))
    grid = sorted(set(np.round(np.arange(steps + 1) / steps, 4).tolist()) | {0.15, 0.2})
    settings = EvalSettings(batch_size=args.batch_size, thresholds=grid,
                            v2_step=args.threshold_step,
                            faithfulness_limit=args.faithfulness_limit,
                            faithfulness_steps=args.steps, substrate=args.substrate,
                            sanity_limit=args.sanity_limit)
    log(f"[evaluate] {len(dataset)} images, {len(methods)} methods ({', '.join(methods)}), "
        f"batches of {args.batch_size}: a line per batch")
    results = evaluate(model, methods, dataset, args.out, settings, plots=not args.no_plots,
                       log=log, on_error=args.on_error)
    print((Path(args.out) / "results.md").read_text())
    return 0 if all("error" not in r for r in results["methods"].values()) else 1
