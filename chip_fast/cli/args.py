"""What every ``chip-fast`` subcommand shares: the parser that reports an error in one line, the
help that shows defaults, the one set of model arguments, and the parsers of class and layer
lists."""
from __future__ import annotations

import argparse

import torch
from torch import nn

EXIT_CODES = ("exit codes: 0 done; 1 nothing could be done (e.g. no image explained); 2 bad "
              "input or output locked by another run; 130 interrupted")


class Parser(argparse.ArgumentParser):
    """An argument error is one line (and exit code 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: x)' where there is a default worth showing (not None, not a flag off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand's parser with the shared formatter and the exit codes in its help."""
    return sub.add_parser(name, help=help, formatter_class=Formatter, epilog=EXIT_CODES)


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--arch, --weights, --device: the same three options, with the same meaning, everywhere a
    subcommand runs a model."""
    p.add_argument("--arch", required=required,
                   help="torchvision classifier name (e.g. mobilenet_v2, resnet50), "
                        "efficientnet_lite0/1/2, or timm:<name> for a timm model (e.g. "
                        "timm:resnet50.a1_in1k, timm:convnext_tiny; needs pip install "
                        "'chip-fast[timm]')" + ("" if required else " (needed with --images)"))
    p.add_argument("--weights", help="state_dict file; for timm models a timm checkpoint, .pth "
                                     "or .safetensors (default: the architecture's pretrained "
                                     "weights, downloaded by torchvision or timm: needs "
                                     "internet once)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def device_of(args: argparse.Namespace) -> torch.device:
    """--device, or CUDA where there is one. A device this machine does not have is a
    ValueError naming the ones it has (torch's own errors say neither)."""
    if not args.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device name: use cpu, cuda or "
                         "cuda:N") from None
    gpus = torch.cuda.device_count() if device.type == "cuda" else None
    if gpus == 0:
        raise ValueError(f"--device {args.device}: torch sees no CUDA device here (no GPU, "
                         "driver or CUDA build of torch); use --device cpu")
    if gpus is not None and device.index is not None and device.index >= gpus:
        raise ValueError(f"--device {args.device}: this machine has cuda:0 to cuda:{gpus - 1}")
    return device


def model_of(args: argparse.Namespace, device: str | torch.device | None = None) -> nn.Module:
    """The model the model arguments name, in eval mode on ``device`` (default: --device)."""
    from ..models.loading import load_model
    return load_model(args.arch, args.weights, device_of(args) if device is None else device)


def parse_classes(text: str | None, names: bool = False) -> list[int | str] | None:
    """'0-99,150,200-210' -> [0, ..., 99, 150, 200, ..., 210] (an argparse type: a bad list is
    an ArgumentTypeError saying what is wrong). ``names``: a part that is not an index or a range
    is kept as a class's wnid or name ('n01440764,tench'), which the data resolves."""
    if text is None:
        return None
    if not text.strip(",").strip():
        raise argparse.ArgumentTypeError("empty class list: leave the option out for the "
                                         "default classes")
    out: list[int | str] = []
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
                if names:
                    if part not in out:
                        out.append(part)
                    continue
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


def whole(least: int):
    """An argparse type: a whole number, ``least`` or more (else a one-line error before any
    work)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"{n}: give {least} or more")
        return n
    parse.__name__ = f"whole number >= {least}"
    return parse


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, 0 or more."""
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not s >= 0 or s == float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: give a number of seconds, 0 or more")
    return s


def parse_layers(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None -> None (the default layers); an empty list is refused (an
    empty --layers is more likely a shell variable left unset than a wish for the defaults)."""
    if text is None:
        return None
    layers = [x.strip() for x in text.split(",") if x.strip()]
    if not layers:
        raise ValueError("--layers is empty: leave it out for the default layers")
    return layers
