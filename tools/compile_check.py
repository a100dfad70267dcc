"""Compile every Triton kernel of chip_fast for NVIDIA GPUs ahead of time, without a GPU.

    python -m tools.compile_check [--arch 90 80] [--json out.json]      (from the repository root)

For each kernel, the launch configurations its wrapper really chooses (block sizes, dtypes,
fills, layouts) are recorded by calling the wrapper on the shapes the engine and the tests use,
with the launch replaced by a recorder; each distinct configuration is compiled with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` to PTX and a cubin, and
ptxas (the one Triton ships) reports registers, spills and stack. Exit status 1 on any compile
error. tests/kernels/test_compile.py runs this with the installed Triton;
tools/compile_check_triton36.sh runs it with Triton 3.6, the version of the GPU machines.

Must run with TRITON_INTERPRET unset (the interpreter replaces the kernels); it unsets it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from chip_fast import rng  # noqa: E402
from chip_fast.ops.perturb import perturb_kernel  # noqa: E402
from chip_fast.ops.perturb_means import perturb_means_kernel  # noqa: E402
from chip_fast.ops.response_sums import response_sums_kernel  # noqa: E402
import chip_fast.kernels.class_maps as k_maps  # noqa: E402
import chip_fast.kernels.perturb as k_perturb  # noqa: E402
import chip_fast.kernels.perturb_means as k_means  # noqa: E402
import chip_fast.kernels.prox as k_prox  # noqa: E402
import chip_fast.kernels.response_sums as k_sums  # noqa: E402

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
         torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8",
         torch.int8: "i8", torch.bool: "i1"}
# Kernels that run once per batch of the distillation loop: a register spill there costs the
# job, so tests/kernels/test_compile.py fails on one unless the kernel's docstring justifies it.
HOT = {"_perturb_kernel", "_perturb_means_kernel", "_response_sums_kernel"}


class _Recorder:
    """Stands in for a @triton.jit kernel: ``kernel[grid](*args, **constexprs)`` is recorded."""

    def __init__(self, kernel) -> None:
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _record(module, name: str, call) -> list[tuple]:
    rec = _Recorder(getattr(module, name))
    setattr(module, name, rec)
    try:
        call()
    finally:
        setattr(module, name, rec.kernel)
    return [(rec.kernel, args, kwargs) for args, kwargs in rec.calls]


def _perturb_launches() -> list[tuple]:
    out = []
    shapes = [(32, 1280, (7, 7), 256), (8, 576, (14, 14), 256), (4, 512, (14, 14), 64),
              (3, 13, (5, 7), 9), (2, 6, (), 5), (2, 3, (33, 40), 2)]
    for (v, k, sp, t), fill, dtype, layout in itertools.product(
            shapes, ("noise", "zero", "mean"), (torch.float32, torch.bfloat16, torch.float16,
                                                torch.float64), ("nchw", "nhwc_bf16")):
        if len(sp) != 2 and layout != "nchw":
            continue
        acts = torch.zeros(v, k, *sp, dtype=dtype)
        idx = torch.arange(t) % v
        out_buf = None
        if layout == "nhwc_bf16":   # the CUDA engine: bf16 channels-last into the tail's input
            out_buf = torch.empty(t, k, *sp, dtype=torch.bfloat16).contiguous(
                memory_format=torch.channels_last)
        # The paired designs for the engine's own layout and dtypes; every design elsewhere
        # would triple the configurations without reaching another code path.
        designs = (rng.MASK_DESIGNS if layout == "nhwc_bf16" or dtype == torch.float32
                   else ("independent",))
        for design in designs:
            out += _record(k_perturb, "_perturb_kernel", lambda: perturb_kernel(
                acts, idx, idx, idx, seed=2**63 + 5, p_keep=0.5, fill=fill, mu=torch.zeros(k),
                sigma=torch.ones(k), out=out_buf, design=design))
    return out


def _other_launches() -> list[tuple]:
    out = []
    for (t, k, rows), anti in itertools.product(
            [(4096, 1280, 32), (8192, 576, 64), (100, 13, 3), (30, 3, 1000)], rng.MASK_DESIGNS):
        samples, y = torch.arange(t), torch.zeros(t)
        out += _record(k_sums, "_response_sums_kernel", lambda: response_sums_kernel(
            2**40 + 17, samples, 0.5, k, y, samples % rows, rows, design=anti))
    for (t, k, rows, batch), matrix, base, anti in itertools.product(
            [(1024, 576, 32, 256), (8192, 1280, 32, 4096), (60, 13, 3, 16)], (True, False),
            (True, False), rng.MASK_DESIGNS):
        # The engine's per-unit path: a plan made once, one accumulating launch per batch.
        idx = torch.arange(t)
        order, bounds, splits = k_sums.batch_plan(idx % rows, rows, batch)
        dev_plan = (order, bounds, idx, idx % 7, idx % 5)
        sums = (torch.zeros(rows, splits, k, dtype=torch.float64),
                torch.zeros(rows, splits, dtype=torch.float64),
                torch.zeros(rows, splits, dtype=torch.float64))
        responses = torch.zeros(batch, 7) if matrix else torch.zeros(batch)
        out += _record(k_sums, "_response_sums_kernel", lambda: k_sums.response_sums_accumulate(
            (5, 7), 2**31, rng.MASK_TAG_WORD, dev_plan, 1, batch, responses,
            torch.zeros(5) if base else None, 0.5, sums, rng.design_args(anti, k, 0.5, 4)))
    for (t, k), fill, anti in itertools.product([(4096, 1280), (9, 13)],
                                                ("noise", "zero", "mean"), rng.MASK_DESIGNS):
        idx = torch.arange(t) % 4
        out += _record(k_means, "_perturb_means_kernel", lambda: perturb_means_kernel(
            torch.zeros(4, k), idx, idx, idx, seed=3, p_keep=0.5, fill=fill, mu=torch.zeros(k),
            sigma=torch.ones(k), elements=49, design=anti))
    for (b, k, h, w, c, p, size), dtype in itertools.product(
            [(8, 1280, 7, 7, 1000, 8, (224, 224)), (8, 576, 14, 14, 1000, 8, (224, 224)),
             (2, 13, 5, 7, 3, 5, (17, 23))], (torch.float32, torch.bfloat16, torch.float16)):
        acts, weights = torch.zeros(b, k, h, w, dtype=dtype), torch.zeros(c, k)
        ii, ci = torch.arange(p) % b, torch.arange(p) % c
        recs = {}
        for name in ("_class_maps_kernel", "_upsample_normalize_kernel"):
            recs[name] = _Recorder(getattr(k_maps, name))
            setattr(k_maps, name, recs[name])
        try:
            k_maps.class_maps_triton(acts, weights, ii, ci, size)
        finally:
            for name, rec in recs.items():
                setattr(k_maps, name, rec.kernel)
                out += [(rec.kernel, a, kw) for a, kw in rec.calls]
    for (k, c), dtype, nonneg in itertools.product([(1280, 1000), (37, 5)],
                                                   (torch.float32, torch.float64), (False, True)):
        g, w, lam = torch.zeros(k, k, dtype=dtype), torch.zeros(k, c, dtype=dtype), torch.zeros(c)
        out += _record(k_prox, "_fista_kernel", lambda: k_prox.fista_step_triton(
            g, w, w, w, 0.1, lam.to(dtype), nonneg, 0.5))
    return out


def _arg_type(x) -> str:
    if isinstance(x, torch.Tensor):
        return "*" + TYPES[x.dtype]
    if isinstance(x, bool):
        return "i1"
    if isinstance(x, int):
        return "i32" if -2**31 <= x < 2**31 else "i64"
    if isinstance(x, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {type(x).__name__}")


def configurations() -> list[tuple]:
    """Distinct (kernel, signature, constexprs) the wrappers launch."""
    seen, out = set(), []
    for kernel, args, consts in _perturb_launches() + _other_launches():
        names = kernel.arg_names
        sig = dict(zip(names, (_arg_type(a) for a in args)))
        sig.update({n: "constexpr" for n in consts})
        sig = {n: sig[n] for n in names}
        key = (kernel.fn.__name__, tuple(sig.items()), tuple(sorted(consts.items())))
        if key not in seen:
            seen.add(key)
            out.append((kernel, sig, dict(consts)))
    return out


def _ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    from triton.backends.nvidia import compiler as nvidia
    ptxas = Path(nvidia.__file__).parent / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        log = subprocess.run([str(ptxas), "-v", "--gpu-name", gpu, f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    number = lambda pattern: int(m.group(1)) if (m := re.search(pattern, log)) else -1  # noqa
    return {"registers": number(r"Used (\d+) registers"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"),
            "stack": number(r"(\d+) bytes stack frame")}


def compile_all(archs: list[int]) -> list[dict]:
    results = []
    for kernel, sig, consts in configurations():
        for arch in archs:
            row = {"kernel": kernel.fn.__name__, "arch": arch, "hot": kernel.fn.__name__ in HOT,
                   "constexprs": {k: v for k, v in consts.items() if not k.endswith("_TAG")},
                   "signature": {k: v for k, v in sig.items() if v != "constexpr"}}
            t0 = time.perf_counter()
            try:
                c = triton.compile(triton.compiler.ASTSource(fn=kernel, signature=sig,
                                                             constexprs=consts),
                                   target=GPUTarget("cuda", arch, 32))
                row.update(_ptxas_report(c.asm["ptx"], arch), shared=c.metadata.shared,
                           cubin_bytes=len(c.asm["cubin"]), ok=True)
            except Exception as e:  # noqa: BLE001 - reported per configuration
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
            row["seconds"] = round(time.perf_counter() - t0, 2)
            results.append(row)
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = compile_all(args.arch)
    print(f"triton {triton.__version__}, torch {torch.__version__}: {len(results)} compilations")
    for r in results:
        cfg = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        if r["ok"]:
            print(f"ok   sm_{r['arch']} {r['kernel']:28s} regs={r['registers']:3d} "
                  f"spill={r['spill_stores']}/{r['spill_loads']} shared={r['shared']} {cfg}")
        else:
            print(f"FAIL sm_{r['arch']} {r['kernel']:28s} {cfg}\n     {r['error'][:500]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"triton": triton.__version__,
                                               "torch": torch.__version__,
                                               "results": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
