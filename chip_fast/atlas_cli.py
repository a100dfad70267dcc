"""``chip-fast atlas``: distil with the channel atlas, and show what a class's channels are.

    chip-fast atlas build --arch mobilenet_v2 --weights w.pth --data train/ --out m.chip
        distils as ``chip-fast distill`` does and keeps the channel atlas of the same prefix
        passes; writes the importance file and the atlas beside it (m.atlas)
    chip-fast atlas show --importance m.chip --classes 281,967 [--images cat.jpg --arch ...]
        writes atlas.html: each class's top channels with the patches where they fire most in
        the distillation photos and, with --images, where they fire on those photos

Owns the subcommand's options and its page; the atlas is ``chip_fast.atlas``'s and its rows
``chip_fast.atlas_report``'s.
"""
from __future__ import annotations

import argparse
import html
from pathlib import Path

import torch


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = parser.add_subparsers(dest="atlas_command", required=True)
    b = sub.add_parser("build", help="distil with the channel atlas (importance + .atlas file)")
    b.add_argument("--arch", required=True, help="torchvision classifier or efficientnet_lite0")
    b.add_argument("--weights", help="state_dict file (default: the pretrained weights)")
    b.add_argument("--data", required=True, help="image folder, train/<wnid>/*.JPEG layout")
    b.add_argument("--layers", help="comma-separated layers (default: picked per model)")
    b.add_argument("--classes", help="class indices, e.g. 0-99,150 (default: all)")
    b.add_argument("--samples-per-class", type=int, default=2048)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--augment", type=int, default=1, help="views per image")
    b.add_argument("--top-k", type=int, default=6, help="patches kept per channel")
    b.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    b.add_argument("--out", required=True, help="importance file; the atlas goes beside it")
    b.set_defaults(func=cmd_build)
    s = sub.add_parser("show", help="write atlas.html for classes of an importance file")
    s.add_argument("--importance", required=True)
    s.add_argument("--atlas", help="atlas file (default: the importance's path with .atlas)")
    s.add_argument("--classes", help="classes to show (default: the first 20 distilled)")
    s.add_argument("--top", type=int, default=5, help="channels per class and layer")
    s.add_argument("--images", nargs="*", default=[], help="photos to show the channels on")
    s.add_argument("--arch", help="needed with --images")
    s.add_argument("--weights")
    s.add_argument("--out", default="chip-atlas", help="output folder")
    s.set_defaults(func=cmd_show)
    return parser


def atlas_path(importance: str | Path) -> Path:
    return Path(importance).with_suffix(".atlas")


def cmd_build(args: argparse.Namespace) -> int:
    from .atlas import build_atlas, save_atlas
    from .cli import parse_classes, parse_layers
    from .data import ImageFolderSource
    from .models import load_model
    from .preprocess import preprocess_for
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.arch, args.weights, device)
    data = ImageFolderSource(args.data, preprocess=preprocess_for(args.arch))
    imp, atlas = build_atlas(model, data, parse_layers(args.layers),
                             classes=parse_classes(args.classes), k=args.top_k,
                             samples_per_class=args.samples_per_class, seed=args.seed,
                             augment=args.augment)
    imp.save(args.out)
    save_atlas(atlas, atlas_path(args.out))
    print(f"wrote {args.out} and {atlas_path(args.out)}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .atlas import channel_maps, load_atlas
    from .atlas_report import ATLAS_CSS, class_rows, rows_html
    from .classes import imagenet_classes
    from .cli import parse_classes
    from .importance import load_importance
    imp = load_importance(args.importance)
    atlas = load_atlas(args.atlas or atlas_path(args.importance))
    names = imp.class_names or list(imagenet_classes()[1])
    classes = parse_classes(args.classes) or imp.classes[:20]
    photos = _photos(args, imp) if args.images else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for c in classes:
        label = names[c] if c < len(names) else f"class {c}"
        if not photos:
            rows = class_rows(atlas, imp, c, out, f"c{c}", names, n=args.top)
            sections.append(f"<h2>{html.escape(label)} ({c})</h2>{rows_html(rows)}")
        for j, (model, x, rgb, name) in enumerate(photos):
            heat = (lambda layer, chs, x=x, model=model:
                    channel_maps(model, layer, x, chs)[0].numpy())
            rows = class_rows(atlas, imp, c, out, f"c{c}_p{j}", names, n=args.top, photo=rgb,
                              channel_heat=heat)
            sections.append(f"<h2>{html.escape(label)} ({c}) on {html.escape(name)}</h2>"
                            f"{rows_html(rows)}")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>CHIP channel atlas'
            f'</title><style>body {{ font-family: system-ui, sans-serif; margin: 2em; }}'
            f'{ATLAS_CSS}</style></head><body><h1>CHIP channel atlas</h1>{"".join(sections)}'
            f'</body></html>')
    (out / "atlas.html").write_text(page, encoding="utf-8")
    print(f"open {out / 'atlas.html'}")
    return 0


def _photos(args: argparse.Namespace, imp) -> list:
    """(model, input (1, 3, H, W), the pixels it sees (H, W, 3) uint8, name) per photo."""
    import numpy as np
    from PIL import Image
    from .models import load_model
    from .preprocess import preprocess_for
    if not args.arch:
        raise ValueError("--images needs --arch (and --weights) to compute the activations")
    model = load_model(args.arch, args.weights)
    imp.check_model(model)
    prep = preprocess_for(args.arch)
    out = []
    for p in args.images:
        with Image.open(p) as im:
            im = im.convert("RGB")
            out.append((model, prep(im)[None], np.asarray(prep.geometry(im)), Path(p).name))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="chip-fast atlas"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
