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
from pathlib import Path

from ..util.atomic import atomic_write_text
from .args import add_command, add_model_args, model_of, parse_classes


def configure(sub) -> None:
    s = add_command(sub, "atlas", "show what the channels that carry each class respond to")
    s.add_argument("--importance", required=True,
                   help="importance file distilled with --atlas K")
    s.add_argument("--classes", help="classes to show, e.g. 281,967 (default: the first 20 "
                                     "distilled)")
    s.add_argument("--top", type=int, default=5, help="channels per class and layer")
    s.add_argument("--images", nargs="*", default=[], help="photos to show the channels on")
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
    classes = parse_classes(args.classes) or imp.classes[:20]
    imp.require(classes=classes)
    model, photos = _photos(args, imp) if args.images else (None, [])
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
    print(f"open {out / 'atlas.html'}")
    return 0


def _photos(args: argparse.Namespace, imp) -> tuple:
    """The model, and per photo (input (1, 3, H, W), the pixels it sees (H, W, 3) uint8, name)."""
    import numpy as np
    from PIL import Image
    from ..models.loading import preprocess_of
    if not args.arch:
        raise ValueError("--images needs --arch (and --weights) to compute the activations")
    model = model_of(args)
    imp.check_model(model)
    prep = preprocess_of(model)
    out = []
    for p in args.images:
        with Image.open(p) as im:
            im = im.convert("RGB")
            out.append((prep(im)[None], np.asarray(prep.geometry(im)), Path(p).name))
    return model, out

