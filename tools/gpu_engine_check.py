"""The distillation engine on a GPU, part by part: correctness against the CPU and speed against
the device's own ceilings. Run by tools/gpu_check.sh; ``--device cpu --quick`` runs every part
on a CPU with small sizes (the script's dry run).

    python -m tools.gpu_engine_check --out DIR [--device cuda] [--quick] [--parts a b ...]

Parts (tools/engine_parts.py, tools/speed_parts.py): ceilings, correctness, launches, overhead,
affine, plain, vgg, decode. Each part prints one line ``STEP <part>: ok|fail|skip (...)`` with
its key figures, and DIR/engine.json is rewritten after every part, so whatever ran is kept.
A part that raises is recorded as failed and the next part runs; a part over its time limit
(a watchdog thread: a hung kernel cannot be interrupted) prints its fail line and ends the
process with status 124, and a part that leaves CUDA unusable ends it with status 3: the
script then starts a fresh process for the parts left. engine.json holds one record per
target of issue 23 that a part measured: ``target``, ``measured``, ``goal``, ``met``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from tools import engine_parts, speed_parts
from tools.targets import targets

PARTS = {   # name: (function, time limit on a GPU, on a CPU with --quick), in the script's order
    "ceilings": (speed_parts.ceilings, 30, 30),
    "correctness": (engine_parts.correctness, 90, 60),
    "launches": (engine_parts.launches, 45, 60),
    "overhead": (engine_parts.overhead, 60, 60),
    "affine": (engine_parts.affine, 30, 30),
    "plain": (speed_parts.plain, 45, 40),
    "vgg": (speed_parts.vgg, 90, 60),
    "decode": (speed_parts.decode, 40, 30),
}


class Results:
    """engine.json: the device, and each part's record as soon as it exists (merged into what
    an earlier process of the same run wrote)."""

    def __init__(self, out: Path, device: torch.device) -> None:
        self.path = out / "engine.json"
        self.lock = threading.Lock()
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data.update(device_info(device))
        self.data.setdefault("parts", {})

    def record(self, part: str, result: dict) -> None:
        with self.lock:
            self.data["parts"][part] = result
            self.data["targets"] = targets(self.data["parts"])
            tmp = self.path.with_name("engine.json.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.path)


def device_info(device: torch.device) -> dict:
    import triton
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from tools.gpu_steps import cpu_name
        name = f"cpu: {cpu_name()}"
    return {"device": name, "cuda": torch.version.cuda, "torch": torch.__version__,
            "triton": triton.__version__}


def line(part: str, result: dict) -> str:
    text = result.get("summary", "")
    return f"STEP {part}: {result['status']}" + (f" ({text})" if text else "")


def run_part(part: str, ctx: "engine_parts.Context", results: Results) -> None:
    fn, gpu_limit, cpu_limit = PARTS[part]
    limit = gpu_limit if ctx.device.type == "cuda" else cpu_limit
    t0 = time.perf_counter()

    def overdue() -> None:
        result = {"status": "fail", "summary": f"timeout after {limit} s", "seconds": limit}
        results.record(part, result)
        print(line(part, result), flush=True)
        os._exit(124)
    watchdog = threading.Timer(limit, overdue)
    watchdog.daemon = True
    watchdog.start()
    try:
        result = fn(ctx)
    except Exception as e:  # noqa: BLE001 - any failure is this part's, the next one runs
        traceback.print_exc()
        result = {"status": "fail", "summary": f"{type(e).__name__}: {e}".replace("\n", " ")
                  [:300]}
    finally:
        watchdog.cancel()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    results.record(part, result)
    ctx.parts[part] = result
    print(line(part, result), flush=True)


def cuda_usable(device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    try:
        torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
        return True
    except Exception:  # noqa: BLE001 - a sticky CUDA error: only a new process helps
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tools/results/gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run)")
    ap.add_argument("--parts", nargs="*", default=list(PARTS))
    args = ap.parse_args()
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; known: {list(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results = Results(out, device)
    ctx = engine_parts.Context(device, args.quick, dict(results.data["parts"]))
    for part in args.parts:
        run_part(part, ctx, results)
        if not cuda_usable(device):
            print(f"CUDA is unusable after {part}: the parts left need a fresh process",
                  file=sys.stderr, flush=True)
            sys.exit(3)


if __name__ == "__main__":
    main()
