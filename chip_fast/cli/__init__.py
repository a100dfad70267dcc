"""The ``chip-fast`` command: distill, explain, atlas, evaluate, demo.

Owns the command line: parsing options (``args``: one set of model arguments for every
subcommand), checking them before any work, and turning errors into one line and an exit code
(0 done, 1 nothing could be done / a method failed, 2 bad input or another run holds the
output, 130 interrupted). Each subcommand is one module that calls the library's function for it
and computes nothing itself."""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings

import torch

from . import atlas, demo, distill, evaluate, explain
from .args import Formatter, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="chip-fast", description="CHIP channel importance: distill, explain, "
                                                  "atlas, evaluate, demo.",
                    formatter_class=Formatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (distill, explain, evaluate, atlas, demo):
        command.configure(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"chip-fast: {category.__name__}: {message}\n"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on its own line above a live progress bar (tqdm.write clears and redraws the
    bar), not glued to the bar's end where it is easy to miss."""
    from tqdm import tqdm
    tqdm.write(_one_line_warning(message, category, filename, lineno).rstrip("\n"),
               file=file or sys.stderr)


# What a bare OSError from the file system means for a user of the command (the errno's text
# alone, "[Errno 17] File exists", does not say what was in the way).
_OS_HINTS = {errno.EEXIST: "a file is in the way of a folder the command creates",
             errno.ENOTDIR: "a part of this path is a file, not a folder",
             errno.EACCES: "no permission (choose an output folder you may write to)",
             errno.EROFS: "the file system is read-only (choose another output folder)",
             errno.ENOENT: "no such file or folder",
             errno.ENOSPC: "the disk is full"}


def _os_message(e: BaseException) -> str:
    """``e`` as the line a user reads: an OSError of the file system as 'path: what it means'
    (our own OSErrors, which carry a sentence and no errno, unchanged)."""
    if isinstance(e, OSError) and e.errno in _OS_HINTS and e.filename is not None:
        return f"{e.filename}: {_OS_HINTS[e.errno]} ({e.strerror})"
    return str(e)


def _default_warning_display() -> bool:
    """Whether warnings are shown the standard way, so that showing them through tqdm changes
    only where they print: not where a caller replaced the display or records warnings
    (catch_warnings(record=True) keeps showwarning and swaps the private _showwarnmsg_impl, so
    both are asked; where either is unknown, the display is left alone)."""
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    return (warnings.showwarning is getattr(warnings, "_showwarning_orig", None)
            and getattr(impl, "__module__", None) in ("warnings", "_py_warnings"))


def _size_threads() -> None:
    """torch's intra-op threads, at most the CPUs this process may use (affinity, cgroup quota):
    torch counts the machine's cores, and threads beyond the CPUs a job may run on wait on each
    other. OMP_NUM_THREADS, when set, is the user's choice and stays."""
    from ..util.cpus import usable_cpus
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())


def main(argv: list[str] | None = None) -> int:
    from ..util.locks import LockedError
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(message)s")
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    showwarning = warnings.showwarning
    if _default_warning_display():
        warnings.showwarning = _show_warning
    _size_threads()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"chip-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError, LockedError, ImportError,
            argparse.ArgumentTypeError) as e:
        # bad input, missing or unreadable files, another run's lock: the message is the answer
        print(f"chip-fast {args.command}: error: {_os_message(e)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning, warnings.showwarning = formatwarning, showwarning


__all__ = ["build_parser", "main"]
