"""The ``chip-fast`` command: distill, explain, atlas, evaluate, demo.

Owns the command line: parsing options (``args``: one set of model arguments for every
subcommand), checking them before any work, and turning errors into one line and an exit code
(0 done, 1 nothing could be done / a method failed, 2 bad input or another run holds the
output, 130 interrupted). Each subcommand is one module that calls the library's function for it
and computes nothing itself."""
from __future__ import annotations

import argparse
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


__all__ = ["build_parser", "main"]
