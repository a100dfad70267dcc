"""Class indices and names: the standard ILSVRC order, or a mapping file in that format."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


@functools.cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ILSVRC2012 classes in the standard model output order."""
    text = resources.files("chip_fast").joinpath("imagenet_classes.txt").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def read_mapping(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a ``LOC_synset_mapping.txt``-style file: line i is ``wnid name`` of class i."""
    path = Path(path)
    wnids, names = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        wnids.append(parts[0])
        names.append(parts[1] if len(parts) > 1 else parts[0])
    if not wnids:
        raise ValueError(f"{path}: no classes in the mapping file")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path}: a class id appears twice")
    return wnids, names
