"""python -m benchmarks.jobs <name> [options]: one whole-job timing by name; without a name, the
list of names with what each measures."""
from __future__ import annotations

import ast
import importlib
import sys
import textwrap
from pathlib import Path

JOBS = ("stability", "vs_plain_loop", "plain_loop", "explain_speed", "shared_machine",
        "distill_breakdown", "distill_throughput", "vgg_head", "stage_cost", "chain_per_view")


def summary(name: str) -> str:
    # Read from the source, not imported: listing the jobs should not import torch six times.
    source = (Path(__file__).parent / f"{name}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or "").split("\n\n")[0].replace("\n", " ")


def usage() -> str:
    lines = ["usage: python -m benchmarks.jobs <name> [options]   (<name> --help: its options)",
             "", "names:"]
    lines += [textwrap.fill(summary(name), 100, initial_indent=f"  {name:19s} ",
                            subsequent_indent=" " * 22) for name in JOBS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = argv[0]
    if name not in JOBS:
        print(f"unknown job {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    # argparse takes its program name from argv[0]: the job's --help and errors then show the
    # command as it is typed.
    sys.argv[0] = f"python -m benchmarks.jobs {name}"
    importlib.import_module(f"benchmarks.jobs.{name}").main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
