"""The ``chip-fast`` command: distill, explain, evaluate, demo.

Owns the command line: parsing options and turning errors into messages. Every subcommand calls
the library's one function for it (``distill_all_classes``, ``explain``, ``evaluate``,
``run_demo``) and computes nothing itself."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch


def parse_classes(text: str | None) -> list[int] | None:
    """'0-99,150,200-210' -> [0, ..., 99, 150, 200, ..., 210]."""
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad class list {text!r}: use e.g. 0-99,150") from None
    return out


def parse_layers(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True,
                   help="torchvision classifier name (e.g. mobilenet_v2, resnet50) or efficientnet_lite0")
    p.add_argument("--weights", help="state_dict file; default: the architecture's pretrained weights")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def cmd_distill(args: argparse.Namespace) -> int:
    from .data import ImageFolderSource
    from .distill import distill_all_classes
    from .models import load_model
    from .preprocess import preprocess_for
    data = ImageFolderSource(args.data, mapping_file=args.mapping_file,
                             preprocess=preprocess_for(args.arch), on_error=args.on_error,
                             decode_device=args.decode_device)
    kwargs = dict(layers=parse_layers(args.layers), classes=parse_classes(args.classes),
                  samples_per_class=args.samples_per_class, seed=args.seed, p_keep=args.p_keep,
                  fill=args.fill, response=args.response, alpha=args.alpha, nonneg=args.nonneg,
                  augment=args.augment, batch_size=args.batch_size)
    # One path for one process and for torchrun's many: distill_all_classes runs alone when no
    # process group is launched, and shards class groups across ranks when one is.
    # The model loads on the CPU: each rank then picks its own device (cuda:LOCAL_RANK), so no
    # rank opens a context on GPU 0.
    model = load_model(args.arch, args.weights, "cpu")
    distill_all_classes(model, data, out=args.out, checkpoint=args.checkpoint,
                        device=_device(args.device), max_memory=args.max_memory,
                        timeout=args.dist_timeout, checkpoint_every=args.checkpoint_every,
                        **kwargs)
    return 0


def _image_paths(items: list[str]) -> list[Path]:
    from .data import IMAGE_SUFFIXES
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no image or folder {p}")
    if not paths:
        raise FileNotFoundError(f"no images in {', '.join(items)}")
    return paths


def cmd_explain(args: argparse.Namespace) -> int:
    from .data import ImageError, load_image
    from .explain import explain
    from .importance import load_importance
    from .models import load_model
    from .preprocess import preprocess_for
    from .overlay import blend, save_png
    device = _device(args.device)
    model = load_model(args.arch, args.weights, device)
    imp = load_importance(args.importance)
    prep = preprocess_for(args.arch)
    classes = parse_classes(args.classes)
    out = Path(args.out)
    written = 0
    for path in _image_paths(args.images):
        try:
            x = load_image(path, prep)[None].to(device)
        except ImageError as e:
            if args.on_error == "raise":
                raise
            print(f"skipping: {e}", file=sys.stderr)
            continue
        with torch.inference_mode():
            pred = model(x).argmax(1)
        targets = classes or [int(pred)]
        for c in targets:
            m = explain(model, imp, x, [c], layers=parse_layers(args.layers),
                        positive=not args.signed)[0].cpu().numpy()
            name = imp.class_names[c] if imp.class_names else str(c)
            target = out / f"{path.stem}_class{c}.png"
            save_png(blend(prep.denormalize(x[0]), m), target)
            print(f"{target}  ({name})")
            written += 1
    return 0 if written else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    kwargs = {} if args.samples_per_class is None else {"samples_per_class": args.samples_per_class}
    report = run_demo(args.out, seed=args.seed, **kwargs)
    print(f"open {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chip-fast", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="distil channel importance of every class into a file")
    _add_model_args(d)
    d.add_argument("--data", required=True, help="image folder in the train/<wnid>/*.JPEG layout")
    d.add_argument("--mapping-file", help="LOC_synset_mapping.txt-style class order "
                                          "(default: ImageNet order for wnid folders)")
    d.add_argument("--layers", help="comma-separated module names (default: picked per model)")
    d.add_argument("--classes", help="class indices to distil, e.g. 0-99,150 (default: all)")
    d.add_argument("--samples-per-class", type=int, default=2048)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--p-keep", type=float, default=0.5)
    d.add_argument("--fill", choices=["noise", "zero", "mean"], default="noise")
    d.add_argument("--response", choices=["logit", "softmax", "log_softmax"], default="logit")
    d.add_argument("--alpha", type=float, default=0.1, help="penalty as a fraction of lambda_max")
    d.add_argument("--nonneg", action="store_true", help="keep only non-negative weights")
    d.add_argument("--augment", type=int, default=1,
                   help="views per image: 1 = none, 2 = with mirror, more = random crops too")
    d.add_argument("--batch-size", type=int, help="perturbed samples per forward (default 64 on CPU, 256 on GPU, "
                                                  "or chosen from --max-memory)")
    d.add_argument("--checkpoint", help="checkpoint folder: saved every --checkpoint-every seconds; "
                                         "rerunning the same command resumes from it")
    d.add_argument("--checkpoint-every", type=float, default=300.0, metavar="S",
                   help="seconds between checkpoints (default 300)")
    d.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget per process, e.g. 8GiB: chooses the batch size and the "
                        "samples per unit (recorded in the output; do not give --batch-size)")
    d.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="under torchrun: seconds a collective or a silent rank may take before "
                        "the job fails (default 600)")
    d.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    d.add_argument("--decode-device", help="decode JPEGs with torchvision on this device "
                                           "(cuda: nvJPEG); default PIL on CPU threads")
    d.add_argument("--out", required=True, help="importance file to write")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("explain", help="write CHIP overlays of images")
    _add_model_args(e)
    e.add_argument("--importance", required=True, help="importance file from 'distill'")
    e.add_argument("--images", nargs="+", required=True, help="image files or folders")
    e.add_argument("--classes", help="classes to explain (default: each image's top-1)")
    e.add_argument("--layers", help="layers to use (default: all in the file, Refined CHIP)")
    e.add_argument("--signed", action="store_true",
                   help="weight channels by importance of both signs (METHOD.md's formula) "
                        "instead of the positive importance only")
    e.add_argument("--on-error", choices=["skip", "raise"], default="skip")
    e.add_argument("--out", default="chip-overlays", help="output folder")
    e.set_defaults(func=cmd_explain)

    v = sub.add_parser("evaluate", help="score CHIP and peer methods on ILSVRC-format data")
    try:
        from .evaluation.runner import configure_parser, main as evaluate_main
        configure_parser(v)
        v.set_defaults(func=evaluate_main)
    except ImportError as exc:  # the evaluation extra is optional
        message = str(exc)
        v.set_defaults(func=lambda _a: sys.exit(f"chip-fast evaluate needs: pip install "
                                                 f"'chip-fast[eval]' ({message})"))

    m = sub.add_parser("demo", help="distil and explain real photos with a real network, offline")
    m.add_argument("--out", default="chip-demo", help="output folder for the report")
    m.add_argument("--samples-per-class", type=int, help="default: the demo's own (about a minute)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"chip-fast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
