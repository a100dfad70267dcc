"""The torchrun step of tools/gpu_check.sh: the distributed path end to end, every collective
run for real.

    python -m tools.gpu_collectives --device cuda|cpu --out torchrun.json   (from the repo root)

Distils a small job in one plain process, then under ``torchrun --standalone`` (on CUDA one
rank with NCCL, since NCCL refuses two ranks on one GPU; on a CPU two ranks with gloo), and
checks that the files are byte for byte the same and that the collectives of
``chip_fast.distill.distributed`` (the fill statistics' broadcast, the groups' rows, the
channel atlas, the job check) really went through the backend: the worker counts the calls
into torch.distributed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
COLLECTIVES = ("broadcast", "all_gather", "all_gather_object", "barrier")
SETTINGS = dict(samples_per_class=64, seed=3, classes_per_unit=2, samples_per_unit=16,
                fill="noise", atlas=2)   # noise: the fill statistics travel; atlas: gathered


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def job_inputs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return Net().eval(), (torch.randn(16, 3, 16, 16, generator=g), torch.arange(8).repeat(2))


def distill(out: Path, device: str) -> None:
    import chip_fast
    model, data = job_inputs()
    chip_fast.distill_all_classes(model, data, ["features.1", "features.3"], out=out,
                                  progress=False, device=device, **SETTINGS)


def worker(out: Path, device: str, counts_path: Path) -> None:
    """One rank: the distributed job with every torch.distributed collective counted."""
    counts = dict.fromkeys(COLLECTIVES, 0)
    for name in COLLECTIVES:
        fn = getattr(dist, name)

        def counted(*args, _fn=fn, _name=name, **kwargs):
            counts[_name] += 1
            return _fn(*args, **kwargs)
        setattr(dist, name, counted)
    distill(out, device)
    if int(os.environ["RANK"]) == 0:
        counts_path.write_text(json.dumps(counts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="torchrun.json")
    ap.add_argument("--worker", nargs=2, metavar=("FILE", "COUNTS"))
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.device, Path(args.worker[1]))
        return 0
    cuda = args.device == "cuda"
    nproc, backend = (1, "nccl") if cuda else (2, "gloo")
    with tempfile.TemporaryDirectory() as tmp:
        one, ranks, counts = Path(tmp, "one.chip"), Path(tmp, "ranks.chip"), Path(tmp, "c.json")
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        # One intra-op thread in both, as torchrun's workers have: CPU float sums then agree
        # bit for bit.
        env["OMP_NUM_THREADS"] = "1"
        t0 = time.perf_counter()
        single = subprocess.run([sys.executable, "-c", "import sys; from tools.gpu_collectives "
                                 "import distill; from pathlib import Path; "
                                 f"distill(Path(sys.argv[1]), {args.device!r})", str(one)],
                                cwd=ROOT, env=env, capture_output=True, text=True)
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", "-m", "tools.gpu_collectives",
                               "--device", args.device, "--worker", str(ranks), str(counts)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        print(single.stdout + single.stderr + proc.stdout + proc.stderr)
        if single.returncode or proc.returncode:
            print(f"STEP torchrun: fail (one process rc={single.returncode}, torchrun "
                  f"rc={proc.returncode})")
            return 1
        same = one.read_bytes() == ranks.read_bytes()
        calls = json.loads(counts.read_text())
    record = {"backend": backend, "ranks": nproc, "same_file": same, "collective_calls": calls,
              "seconds": round(seconds, 1)}
    Path(args.out).write_text(json.dumps(record, indent=1))
    ran = all(calls[c] > 0 for c in ("broadcast", "all_gather", "all_gather_object"))
    ok = same and ran
    print(f"STEP torchrun: {'ok' if ok else 'fail'} ({backend} x{nproc}: file "
          f"{'identical to' if same else 'DIFFERS from'} one process's; collective calls "
          + ", ".join(f"{k} {v}" for k, v in calls.items())
          + ("" if ran else " (some collectives never ran)") + f"; {seconds:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
