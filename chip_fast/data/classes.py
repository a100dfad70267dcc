"""Class indices and names: the standard ILSVRC order, or a mapping file in that format.

Owns the one parser of ``LOC_synset_mapping.txt``-style files; data sources and the evaluation
sets ask it for class orders and never read such files themselves.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


@functools.cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ILSVRC2012 classes in the standard model output order."""
    text = resources.files("chip_fast.data").joinpath("imagenet_classes.txt").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def read_mapping(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a ``LOC_synset_mapping.txt``-style file: line i is ``wnid name`` of class i.

    A blank line inside the file would shift every later class index, so it is refused (with the
    file and line); blank lines at the end are ignored. Returns (wnids, names).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    wnids, names = [], []
    for lineno, line in enumerate(lines, 1):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            raise ValueError(f"{path}:{lineno}: empty line in a class mapping (line i names "
                             "class i, so a blank line would shift every later class)")
        wnids.append(parts[0])
        names.append(parts[1] if len(parts) > 1 else parts[0])
    if not wnids:
        raise ValueError(f"{path}: no classes in the mapping file")
    seen: dict[str, int] = {}
    for lineno, w in enumerate(wnids, 1):
        if w in seen:
            raise ValueError(f"{path}:{lineno}: class id {w} appears twice (first on line "
                             f"{seen[w]})")
        seen[w] = lineno
    return wnids, names
