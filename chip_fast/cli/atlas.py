"""``chip-fast atlas``: what the channels that carry a class respond to.

    chip-fast distill ... --atlas 6 --out m.chip      keeps the channel atlas in the file
    chip-fast atlas --importance m.chip --classes 281,967 [--images cat.jpg --arch ...]

writes ``atlas.html``: each class's top channels with the patches of the distillation photos
where they fire most and, with --images, where they fire on those photos.

Owns the subcommand's options and its page; the atlas is ``chip_fast.atlas.collect``'s and its
rows ``chip_fast.atlas.report``'s.
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from ..util.atomic import atomic_write_text
from .args import add_command, add_model_args, model_of, parse_classes, whole


def configure(sub) -> None:
    s = add_command(sub, "atlas", "show what the channels that carry each class respond to")
    s.add_argument("--importance", required=True,
                   help="importance file distilled with --atlas K")
    s.add_argument("--classes", type=parse_classes,
                   help="classes to show: indices and ranges, e.g. 281,967 or 0-9 (default: the "
                        "first 20 distilled)")
    s.add_argument("--top", type=whole(1), default=5, help="channels per class and layer")
    s.add_argument("--images", nargs="*", default=[],
                   help="photos to show the channels on: image files or folders")
    s.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    add_model_args(s, required=False)
    s.add_argument("--out", default="chip-atlas", help="output folder")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atlas.collect import channel_maps
    from ..atlas.report import ATLAS_CSS, class_rows, patch_note, rows_html
    from ..data.classes import imagenet_classes
    from ..importance.core import load_importance
    from ..report.page import CSS, class_label, page
    imp = load_importance(args.importance)
    atlas = imp.atlas
    if atlas is None:
        raise ValueError(f"{args.importance} holds no channel atlas: distil with --atlas K "
                         "(API: distill_all_classes(..., atlas=K)) to keep one")
    names = imp.class_names or list(imagenet_classes()[1])
    classes = args.classes or imp.classes[:20]   # the parser checked --classes and --top
    imp.require(classes=classes)
    model, photos, skipped = _photos(args, imp) if args.images else (None, [], [])
    if args.images and not photos:
        print(f"chip-fast atlas: none of the {len(skipped)} image(s) could be decoded (named "
              "above); nothing written", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for c in classes:
        label = html.escape(class_label(names, c))
        if not photos:
            rows = class_rows(atlas, imp, c, out, f"c{c}", names, n=args.top)
            sections.append(f"<h2>{label}</h2>{rows_html(rows)}")
        for j, (x, rgb, name) in enumerate(photos):
            heat = (lambda layer, chs, x=x: channel_maps(model, layer, x, chs)[0].numpy())
            rows = class_rows(atlas, imp, c, out, f"c{c}_p{j}", names, n=args.top, photo=rgb,
                              channel_heat=heat)
            sections.append(f"<h2>{label} on {html.escape(name)}</h2>{rows_html(rows)}")
    atomic_write_text(out / "atlas.html",
                      page("CHIP channel atlas", patch_note(atlas), "".join(sections),
                           CSS + ATLAS_CSS))
    note = f" ({len(skipped)} image(s) skipped, named above)" if skipped else ""
    print(f"open {out / 'atlas.html'}{note}")
    return 0


def _photos(args: argparse.Namespace, imp) -> tuple:
    """The model; per photo (input (1, 3, H, W), the pixels it sees (H, W, 3) uint8, name);
    and the files skipped because they cannot be decoded (``--on-error skip``; ``raise``: the
    first one stops the run with its name)."""
    import numpy as np
    from ..data.sources import ImageError, open_photo
    from ..maps.files import image_paths
    from ..models.loading import preprocess_of
    if not args.arch:
        raise ValueError("--images needs --arch (and --weights) to compute the activations")
    paths = image_paths(args.images)   # files and folders, as explain: a missing one fails now
    model = model_of(args)
    imp.check_model(model)
    prep = preprocess_of(model)
    out, skipped = [], []
    for p in paths:
        try:
            im = open_photo(p)
        except ImageError as e:
            if args.on_error == "raise":
                raise
            skipped.append(p)
            print(f"chip-fast atlas: skipped: {e}", file=sys.stderr, flush=True)
            continue
        out.append((prep(im)[None], np.asarray(prep.geometry(im)), p.name))
    return model, out, skipped
