"""Checkpoints of a distillation: one file per process in a folder, merged on resume.

Each process writes ``<folder>/rank-{rank}-of-{world}.ckpt``: a safetensors file with the whole
job state (sums, fill statistics) and, in its metadata, the job's identity and the blocks done
per class group. On resume every file in the folder is read and each class group takes the rows
of the file that has most of its blocks done. A snapshot's rows always match its own progress,
so this is right whatever number of processes wrote the files: a job killed on 16 GPUs resumes
on 4 or on one, and stale files of an older run size are harmless. A damaged file, or one of
another job (model, data, layers, classes or settings differ), is refused, naming it.

Owns the file format and the merge; what the state holds is ``chip_fast.distill.state``'s.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..util.atomic import atomic_write
from .state import DistillState

logger = logging.getLogger("chip_fast")

CHECKPOINT_GLOB = "rank-*-of-*.ckpt"


class CheckpointStore:
    """The checkpoint folder of one job, as seen by process ``rank`` of ``world_size``."""

    def __init__(self, folder: str | Path, identity: str, rank: int = 0, world_size: int = 1
                 ) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint folder {self.folder} is a file: checkpoints are kept "
                             "one per process in a folder")
        self.identity = identity
        self.path = self.folder / f"rank-{rank}-of-{world_size}.ckpt"

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(CHECKPOINT_GLOB)) if self.folder.is_dir() else []

    def save(self, state: DistillState) -> None:
        """Write this process's file atomically."""
        from safetensors.torch import save_file
        meta = {"chip_fast_checkpoint": json.dumps({"identity": self.identity,
                                                    "done_blocks": state.done_blocks})}
        atomic_write(self.path, lambda tmp: save_file(state.tensors(), tmp, metadata=meta))

    def _progress(self, path: Path, n_groups: int, blocks: int) -> list[int]:
        """done_blocks of a checkpoint, after checking that it belongs to this job."""
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["chip_fast_checkpoint"])
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise ValueError(f"checkpoint {path} is damaged or not a chip_fast checkpoint ({e}): "
                             "delete it (its progress is lost) or use another checkpoint") from e
        if meta.get("identity") != self.identity:
            raise ValueError(f"checkpoint {path} belongs to another job (different model, data, "
                             "layers, classes or settings): delete it or use another checkpoint")
        done = meta.get("done_blocks")
        if (not isinstance(done, list) or len(done) != n_groups
                or any(not isinstance(d, int) or not 0 <= d <= blocks for d in done)):
            raise ValueError(f"checkpoint {path} has a malformed progress record: delete it")
        return done

    def restore(self, state: DistillState, device: torch.device) -> bool:
        """Resume ``state`` from every file in the folder: each class group takes the most
        advanced snapshot found. Returns True when the fill statistics were among them (so they
        need not be measured again); False, changing nothing, when there is no file."""
        from safetensors import safe_open
        paths = self.files()
        plan = state.plan
        best: dict[int, tuple[int, int]] = {}   # group -> (blocks done, index in paths)
        progress = [self._progress(p, len(plan.groups), plan.blocks) for p in paths]
        for i, done in enumerate(progress):
            for g, d in enumerate(done):
                if d > best.get(g, (0, -1))[0]:
                    best[g] = (d, i)
        have_stats = False
        for i, path in enumerate(paths):
            groups = [g for g, (_, j) in best.items() if j == i]
            if not groups and have_stats and state.atlas is None:
                continue   # nothing left to read in this file
            with safe_open(str(path), framework="pt") as f:
                names = set(f.keys())
                state.merge_saved_atlas(names, f.get_tensor)
                if not have_stats and state.saved_has_fill_statistics(names):
                    state.load_fill_statistics(f.get_tensor, device)
                    have_stats = True
                state.load_groups(groups, progress[i], f.get_tensor, names)
        if paths:
            logger.warning("chip_fast: resuming from %d checkpoint file(s) in %s (%d of %d units "
                           "done)", len(paths), self.folder, sum(state.done_blocks),
                           len(plan.units))
        return have_stats
