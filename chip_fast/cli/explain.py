"""``chip-fast explain``: CHIP overlays of image files, their raw maps and an index page."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..maps.explain import REFINE_POWER, TOP_DISTILLED
from .args import add_command, add_model_args, model_of, parse_classes, parse_layers


def explain_classes(text: str) -> list[int | str] | str | None:
    """--classes of explain: a class list (indices, ranges, wnids or names), or
    'top-distilled'."""
    return TOP_DISTILLED if text.strip() == TOP_DISTILLED else parse_classes(text, names=True)


def _indices(classes: list[int | str] | str | None, imp) -> list[int] | str | None:
    """Wnids and names of --classes as indices, by the classes the importance file records (the
    distillation data's), as distill resolves them."""
    if not isinstance(classes, list) or all(isinstance(c, int) for c in classes):
        return classes
    from ..distill.inputs import class_indices
    return class_indices(classes, imp.class_ids, imp.class_names)


def configure(sub) -> None:
    e = add_command(sub, "explain", "write CHIP overlays of images, their maps and an index")
    add_model_args(e)
    e.add_argument("--importance", required=True, help="importance file from 'distill'")
    e.add_argument("--images", nargs="+", required=True, help="image files or folders")
    e.add_argument("--classes", type=explain_classes,
                   help=f"classes to explain each image for, e.g. 281,285 or tabby; or "
                        f"{TOP_DISTILLED}: "
                        "each image's highest-scoring class among those distilled (default: "
                        "each image's top-1; images whose top-1 is not distilled are skipped)")
    e.add_argument("--layers", help="layers to use (default: all in the file, Refined CHIP)")
    e.add_argument("--signed", action="store_true",
                   help="weight channels by importance of both signs (METHOD.md's formula) "
                        "instead of the positive importance only")
    e.add_argument("--refine-power", type=float, default=REFINE_POWER,
                   help="in a Refined map, the activations of each layer whose tail is not affine "
                        f"enter at this power (default {REFINE_POWER}; 1: the plain product)")
    e.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    e.add_argument("--max-side", type=int, default=2048,
                   help="overlays are at each photo's resolution, shrunk to this many pixels "
                        "on the long side where larger (0: never)")
    e.add_argument("--out", default="chip-overlays",
                   help="output folder: <image>_class<c>.png overlays, .npy maps, index.html")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..importance.core import load_importance
    from ..maps.files import check_request, explain_files, image_paths, write_index
    from ..models.loading import preprocess_of
    imp = load_importance(args.importance)
    out, layers = Path(args.out), parse_layers(args.layers)
    if args.max_side < 0:
        raise ValueError(f"--max-side {args.max_side}: give a side in pixels, or 0 for never")
    args.classes = _indices(args.classes, imp)
    check_request(imp, out, args.classes, layers,   # before the model loads
                  refine_power=args.refine_power)
    paths = image_paths(args.images)
    model = model_of(args)
    if args.classes is None and len(imp.classes) < imp.num_classes:
        print(f"chip-fast explain: {args.importance} holds {len(imp.classes)} of "
              f"{imp.num_classes} classes: images whose top-1 class is not among them are "
              f"skipped (--classes {TOP_DISTILLED} explains each image's best distilled class)",
              file=sys.stderr, flush=True)
    prep = preprocess_of(model)
    run = explain_files(model, imp, paths, out, prep, classes=args.classes, layers=layers,
                        positive=not args.signed, refine_power=args.refine_power,
                        on_error=args.on_error,
                        max_side=args.max_side)
    index = write_index(run, out, imp, prep, layers, not args.signed,
                        f"{args.arch} ({args.weights or 'pretrained weights'})")
    skipped = f"; {len(run.skipped)} skipped (named above)" if run.skipped else ""
    print(f"{len(run.explained)} overlay(s) of {len(paths)} image(s) in {out}{skipped}; "
          f"open {index}")
    return 0 if run.explained else 1
