"""The targets of issue 23 ("The engine on a GPU"), one record each where a part of
tools/gpu_engine_check.py measured it: ``target``, ``measured``, ``goal``, ``met`` (and the
unit and how it was measured). A target no part measured has no record."""
from __future__ import annotations


def _record(target: str, measured, goal, met: bool, unit: str, how: str) -> dict:
    return {"target": target, "measured": measured, "goal": goal, "met": bool(met),
            "unit": unit, "how": how}


def _speed(parts: dict) -> list[dict]:
    out = []
    plain, over, vgg = parts.get("plain", {}), parts.get("overhead", {}), parts.get("vgg", {})
    if "mobilenet_v2" in plain and "us_per_network" in over:
        ratio = plain["mobilenet_v2"]["us_per_network"] / over["us_per_network"]
        out.append(_record("MobileNetV2 features.14.conv.0: per perturbed network vs the plain "
                           "bf16 channels-last loop", round(ratio, 3), ">= 5", ratio >= 5,
                           "x", "overhead part (warm run) against the plain part"))
    if "vgg16" in plain and "slope_us_per_network" in vgg:
        ratio = plain["vgg16"]["us_per_network"] / vgg["slope_us_per_network"]
        out.append(_record("VGG16 features.29: per perturbed network vs the plain loop",
                           round(ratio, 3), ">= 10", ratio >= 10, "x",
                           "vgg part's slope against the plain part"))
    if "projected_1e8_s" in vgg:
        out.append(_record("VGG16 features.29: 10^8 perturbed networks",
                           round(vgg["projected_1e8_s"], 1), "<= 20", vgg["projected_1e8_s"] <= 20,
                           "s", "vgg part's slope x 10^8"))
    return out


def _busy(parts: dict) -> list[dict]:
    out = []
    over, counts = parts.get("overhead", {}), parts.get("launches", {})
    if "busy_share" in over:
        out.append(_record("hot loop: device work / wall", round(over["busy_share"], 3),
                           ">= 0.9", over["busy_share"] >= 0.9, "share",
                           "torch.profiler over a warm run (the profiler's own host cost "
                           "included)"))
    if "launches_per_batch" in counts:
        out.append(_record("launches per tail batch", counts["launches_per_batch"], "<= 5",
                           counts["launches_per_batch"] <= 5, "launches",
                           "tools/launch_count.py: difference of two job sizes"))
    if "pageable_copies" in over:
        out.append(_record("host tensors pinned: pageable copies in a warm run",
                           over["pageable_copies"], "0", over["pageable_copies"] == 0,
                           "copies", "torch.profiler over a warm run"))
    return out


def _start(parts: dict) -> list[dict]:
    over, out = parts.get("overhead", {}), []
    if "first_call_extra_s" in over:
        out.append(_record("first call at most 2 s slower than a warm one",
                           round(over["first_call_extra_s"], 2), "<= 2",
                           over["first_call_extra_s"] <= 2, "s",
                           "overhead part: a job's first run minus its warm second run, in "
                           "the engine step's process (the kernel tests ran before it)"))
    if "changed_call_recompiles" in over:
        out.append(_record("a call with a new sample count and seed recompiles nothing",
                           over["changed_call_recompiles"], "0",
                           over["changed_call_recompiles"] == 0, "kernel variants compiled",
                           "Triton's per-kernel caches before and after"))
    return out


def _decode(parts: dict) -> list[dict]:
    dec = parts.get("decode", {})
    if not dec.get("nvjpeg_photos_per_s"):
        return []
    return [_record("JPEG decode on the GPU", round(dec["nvjpeg_photos_per_s"]), ">= 3000",
                    dec["nvjpeg_photos_per_s"] >= 3000, "photos/s",
                    "torchvision decode_jpeg, one batched call, 500x375 JPEGs")]


def targets(parts: dict) -> list[dict]:
    """The records the parts so far allow."""
    return _speed(parts) + _busy(parts) + _start(parts) + _decode(parts)
