"""The ``chip-fast`` command: distill, explain, atlas, evaluate, demo.

Owns the command line: parsing options, checking them before any work, and turning errors into
one line and an exit code (0 done, 1 nothing could be done / a method failed, 2 bad input or
another run holds the output, 130 interrupted). Every subcommand calls the library's functions
for it (``distill_all_classes``, ``explain_run``, ``evaluate``, ``run_demo``) and computes
nothing itself."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

import torch

from ..maps.explain import TOP_DISTILLED
from ..distill.plan import DistillSettings

EXIT_CODES = ("exit codes: 0 done; 1 nothing could be done (e.g. no image explained); 2 bad "
              "input or output locked by another run; 130 interrupted")


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (and exit code 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: x)' where there is a default worth showing (not None, not a flag off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def parse_classes(text: str | None) -> list[int] | None:
    """'0-99,150,200-210' -> [0, ..., 99, 150, 200, ..., 210] (an argparse type: a bad list is
    an ArgumentTypeError saying what is wrong)."""
    if text is None or not text.strip():
        return None
    out: list[int] = []
    seen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.startswith("-"):
            why = "class indices are 0 or more"
        else:
            a, sep, b = part.partition("-")
            try:
                lo, hi = int(a), int(b) if sep else int(a)
            except ValueError:
                why = "use class indices and ranges, e.g. 0-99,150"
            else:
                if hi >= lo:
                    out += [c for c in range(lo, hi + 1) if c not in seen]
                    seen.update(range(lo, hi + 1))
                    continue
                why = f"a range goes up, e.g. {hi}-{lo}"
        where = "" if part == text.strip() else f"{part!r}: "
        raise argparse.ArgumentTypeError(f"bad class list {text!r}: {where}{why}")
    return out or None


def explain_classes(text: str) -> list[int] | str | None:
    """--classes of explain: a class list, or 'top-distilled'."""
    return TOP_DISTILLED if text.strip() == TOP_DISTILLED else parse_classes(text)


def parse_layers(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_checkpoint(out: Path) -> Path:
    """Where distill checkpoints when --checkpoint is not given: ``<out>.ckpt`` next to it."""
    return out.with_name(out.name + ".ckpt")


def cmd_distill(args: argparse.Namespace) -> int:
    from ..distill.checkpoint import CHECKPOINT_GLOB
    from ..data.sources import as_source
    from ..distill.job import distill_all_classes, output_locks
    from ..distill.distributed import world_from_env
    from ..models.loading import load_model
    from ..data.preprocess import preprocess_for
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the importance file to write")
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(out)
    # Locked before the data folder is read (minutes for a whole ImageNet train/), so a second
    # run on the same output fails at once; distill_all_classes takes the same locks (nested).
    with output_locks(world_from_env(), out, checkpoint):
        data = as_source(args.data, mapping_file=args.mapping_file,
                         preprocess=preprocess_for(args.arch), on_error=args.on_error,
                         decode_device=args.decode_device)
        # The model loads on the CPU: under torchrun each rank then picks its own device
        # (cuda:LOCAL_RANK), so no rank opens a context on GPU 0.
        model = load_model(args.arch, args.weights, "cpu")
        try:
            distill_all_classes(
                model, data, out=out, checkpoint=checkpoint, keep_checkpoint=args.keep_checkpoint,
                device=_device(args.device), max_memory=args.max_memory,
                timeout=args.dist_timeout, checkpoint_every=args.checkpoint_every,
                layers=parse_layers(args.layers), classes=args.classes,
                samples_per_class=args.samples_per_class, seed=args.seed, p_keep=args.p_keep,
                fill=args.fill, atlas=args.atlas, baseline=args.baseline,
                response=args.response, alpha=args.alpha, nonneg=args.nonneg,
                augment=args.augment, batch_size=args.batch_size)
        except (KeyboardInterrupt, SystemExit):
            if any(checkpoint.glob(CHECKPOINT_GLOB)):
                print(f"chip-fast distill: stopped; the work done is saved in {checkpoint}: run "
                      "the same command again to resume", file=sys.stderr, flush=True)
            raise
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ..maps.files import check_request, explain_files, image_paths, write_index
    from ..importance.core import load_importance
    from ..models.loading import load_model
    from ..data.preprocess import preprocess_for
    imp = load_importance(args.importance)
    out, layers = Path(args.out), parse_layers(args.layers)
    check_request(imp, out, args.classes, layers)        # before the model loads
    paths = image_paths(args.images)
    model = load_model(args.arch, args.weights, _device(args.device))
    if args.classes is None and len(imp.classes) < imp.num_classes:
        print(f"chip-fast explain: {args.importance} holds {len(imp.classes)} of "
              f"{imp.num_classes} classes: images whose top-1 class is not among them are "
              f"skipped (--classes {TOP_DISTILLED} explains each image's best distilled class)",
              file=sys.stderr, flush=True)
    prep = preprocess_for(args.arch)
    run = explain_files(model, imp, paths, out, prep, classes=args.classes, layers=layers,
                        positive=not args.signed, on_error=args.on_error,
                        max_side=args.max_side)
    index = write_index(run, out, imp, prep, layers, not args.signed,
                        f"{args.arch} ({args.weights or 'pretrained weights'})")
    skipped = f"; {len(run.skipped)} skipped (named above)" if run.skipped else ""
    print(f"{len(run.explained)} overlay(s) of {len(paths)} image(s) in {out}{skipped}; "
          f"open {index}")
    return 0 if run.explained else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    kwargs = {} if args.samples_per_class is None else {"samples_per_class": args.samples_per_class}
    report = run_demo(args.out, seed=args.seed, **kwargs)
    print(f"open {report}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", required=True,
                   help="torchvision classifier name (e.g. mobilenet_v2, resnet50) or efficientnet_lite0")
    p.add_argument("--weights", help="state_dict file (default: the architecture's pretrained "
                                     "weights, downloaded by torchvision: needs internet once)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _distill_parser(sub) -> None:
    d = sub.add_parser("distill", help="distil channel importance of every class into a file",
                       formatter_class=_Formatter, epilog=EXIT_CODES)
    _add_model_args(d)
    d.add_argument("--data", help="image folder in the train/<wnid>/*.JPEG layout (default: "
                                  "the folder in the environment variable CHIP_FAST_TRAIN_DIR)")
    d.add_argument("--mapping-file", help="LOC_synset_mapping.txt-style class order "
                                          "(default: ImageNet order for wnid folders)")
    d.add_argument("--layers", help="comma-separated module names (default: picked per model)")
    d.add_argument("--classes", type=parse_classes,
                   help="class indices to distil, e.g. 0-99,150 (default: all with images)")
    d.add_argument("--samples-per-class", type=int, default=2048,
                   help="perturbed networks per class")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of every mask, noise value and crop (same seed, same file)")
    d.add_argument("--p-keep", type=float, default=0.5,
                   help="probability that a perturbation keeps a channel")
    d.add_argument("--fill", choices=["noise", "zero", "mean"], default=DistillSettings.fill,
                   help="what replaces a disabled channel")
    d.add_argument("--response", choices=["logit", "softmax", "log_softmax"], default="logit",
                   help="the class output that is regressed on the masks")
    d.add_argument("--baseline", choices=["none", "view"], default=DistillSettings.baseline,
                   help="view: regress each response minus p_keep x its view's unperturbed "
                        "response (removes the photo-to-photo spread the masks cannot explain); "
                        "none: the raw response")
    d.add_argument("--alpha", type=float, default=0.1, help="penalty as a fraction of lambda_max")
    d.add_argument("--nonneg", action="store_true", help="keep only non-negative weights")
    d.add_argument("--augment", type=int, default=1,
                   help="views per image: 1 = none, 2 = with mirror, more = random crops too")
    d.add_argument("--batch-size", type=int, help="perturbed samples per forward (default: 64 "
                                                  "on CPU, 256 on GPU, or from --max-memory)")
    d.add_argument("--atlas", type=int, default=0, metavar="K",
                   help="keep the channel atlas in the file: each channel's K strongest "
                        "distillation patches, for 'chip-fast atlas' (0: none)")
    d.add_argument("--checkpoint", help="checkpoint folder, saved every --checkpoint-every "
                                        "seconds and on Ctrl-C / SIGTERM; rerunning the same "
                                        "command resumes from it (default: OUT.ckpt next to "
                                        "--out; removed once OUT is written, unless "
                                        "--keep-checkpoint)")
    d.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the checkpoint folder after success")
    d.add_argument("--checkpoint-every", type=float, default=300.0, metavar="S",
                   help="seconds between checkpoints")
    d.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget per process, e.g. 8GiB: chooses the batch size and the "
                        "samples per unit (recorded in the output; do not give --batch-size)")
    d.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="under torchrun: seconds a collective or a silent rank may take before "
                        "the job fails")
    d.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    d.add_argument("--decode-device", help="decode JPEGs with torchvision on this device "
                                           "(cuda: nvJPEG; default: PIL on CPU threads)")
    d.add_argument("--out", required=True,
                   help="importance file to write; locked while the run lasts (OUT.lock), so "
                        "a second run writing it fails at once")
    d.set_defaults(func=cmd_distill)


def _explain_parser(sub) -> None:
    e = sub.add_parser("explain", help="write CHIP overlays of images, their maps and an index",
                       formatter_class=_Formatter, epilog=EXIT_CODES)
    _add_model_args(e)
    e.add_argument("--importance", required=True, help="importance file from 'distill'")
    e.add_argument("--images", nargs="+", required=True, help="image files or folders")
    e.add_argument("--classes", type=explain_classes,
                   help=f"classes to explain each image for, e.g. 281,285; or {TOP_DISTILLED}: "
                        "each image's highest-scoring class among those distilled (default: "
                        "each image's top-1; images whose top-1 is not distilled are skipped)")
    e.add_argument("--layers", help="layers to use (default: all in the file, Refined CHIP)")
    e.add_argument("--signed", action="store_true",
                   help="weight channels by importance of both signs (METHOD.md's formula) "
                        "instead of the positive importance only")
    e.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    e.add_argument("--max-side", type=int, default=2048,
                   help="overlays are at each photo's resolution, shrunk to this many pixels "
                        "on the long side where larger (0: never)")
    e.add_argument("--out", default="chip-overlays",
                   help="output folder: <image>_class<c>.png overlays, .npy maps, index.html")
    e.set_defaults(func=cmd_explain)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="chip-fast", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)
    _distill_parser(sub)
    _explain_parser(sub)
    v = sub.add_parser("evaluate", help="score CHIP and peer methods on ILSVRC-format data",
                       formatter_class=_Formatter, epilog=EXIT_CODES)
    try:
        from ..evaluation.runner import configure_parser, main as evaluate_main
        configure_parser(v)
        v.set_defaults(func=evaluate_main)
    except ImportError as exc:  # the evaluation extra is optional
        message = str(exc)
        v.set_defaults(func=lambda _a: sys.exit(f"chip-fast evaluate needs: pip install "
                                                 f"'chip-fast[eval]' ({message})"))

    a = sub.add_parser("atlas", help="show what the channels that carry each class respond to",
                       formatter_class=_Formatter, epilog=EXIT_CODES)
    from .atlas import configure_parser as configure_atlas
    configure_atlas(a)

    m = sub.add_parser("demo", help="distil and explain real photos with a real network, offline",
                       formatter_class=_Formatter)
    m.add_argument("--out", default="chip-demo", help="output folder for the report")
    m.add_argument("--samples-per-class", type=int, help="default: the demo's own (about a minute)")
    m.add_argument("--seed", type=int, default=0, help="seed of the distillation")
    m.set_defaults(func=cmd_demo)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"chip-fast: {category.__name__}: {message}\n"


def _size_threads() -> None:
    """torch's intra-op threads, at most the CPUs this process may use (affinity, cgroup quota):
    torch counts the machine's cores, and threads beyond the CPUs a job may run on wait on each
    other. OMP_NUM_THREADS, when set, is the user's choice and stays."""
    import os
    from ..util.cpus import usable_cpus
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())


def main(argv: list[str] | None = None) -> int:
    from ..util.locks import LockedError
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    _size_threads()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"chip-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, LockedError, ImportError) as e:
        # bad input, missing or unreadable files, another run's lock: the message is the answer
        print(f"chip-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
