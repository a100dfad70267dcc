"""Milliseconds per image of ``chip_fast.explain`` (Refined CHIP, the API as a user calls it) next
to the model's plain forward pass and to the gradient peers of the evaluation
(pytorch-grad-cam's Grad-CAM, Layer-CAM and RefineCAM at CHIP's layers) on the same photos, in
one run. Each peer runs twice: in the batches the evaluation now gives it on a CPU (the rows of
``chip_fast.models.row_chunks``) and in whole batches of --batch, as it ran before; the largest
difference between the two runs' maps is recorded.

    python -m benchmarks.jobs explain_speed [--photos 64] [--batch 32]

MobileNetV2 with the real weights, the first --photos photos of ../shared/data/imagenet-val-dev,
an importance file distilled for their classes at the default layers (the distillation is not
timed). explain is called once before timing (the model is traced and checked then, once per
model). Writes benchmarks/results/explain_speed_cpu.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import chip_fast
from chip_fast.evaluation import load_val_dir
from chip_fast.models import load_model
from chip_fast.models.row_chunks import run_in_chunks
from chip_fast.util.cpus import usable_cpus

from benchmarks.jobs.record import RESULTS, write_result
from benchmarks.jobs.stability import chunk_rows

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data"


def per_image_ms(fn, batches: list[tuple[torch.Tensor, torch.Tensor]], repeats: int = 3
                 ) -> float:
    """Best of ``repeats`` passes over the batches, in milliseconds per image."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, c in batches:
            fn(x, c)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / sum(len(x) for x, _ in batches)


PEERS = {"gradcam@features.18": ("gradcam", "features.18"),
         "layercam@features.14.conv.0": ("layercam", "features.14.conv.0"),
         "layercam-refined@features.14.conv.0+features.18":
             ("layercam-refined", ["features.14.conv.0", "features.18"])}


def peer_speeds(model, batches, whole: int) -> dict:
    """Per peer: ms per image in the evaluation's CPU batches and in whole batches of ``whole``,
    and the largest difference between the two runs' maps."""
    import numpy as np
    from chip_fast.evaluation.peers import grad_cam_family, peer_batch, refine_cam
    out = {}
    for name, (method, at) in PEERS.items():
        def make(batch_size):
            return (refine_cam(method.split("-")[0], at, batch_size) if isinstance(at, list)
                    else grad_cam_family(method, at, batch_size))
        chunked, full = make(None), make(whole)
        x, c = batches[0]
        diff = float(np.abs(chunked(model, x, c.tolist()) - full(model, x, c.tolist())).max())
        out[name] = {"ms_per_image": per_image_ms(lambda x, c: chunked(model, x, c.tolist()),
                                                  batches, repeats=1),
                     "batch": peer_batch(model, x, None),
                     "whole_batch_ms_per_image": per_image_ms(
                         lambda x, c: full(model, x, c.tolist()), batches, repeats=1),
                     "max_map_difference": diff}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=str(RESULTS), help="folder of the result file")
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="skip the gradient peers (they need chip-fast[eval])")
    args = ap.parse_args(argv)
    model = load_model("mobilenet_v2", DATA / "weights" / "mobilenet_v2_imagenet1k.pth")
    ds = load_val_dir(DATA / "imagenet-val-dev", limit=args.photos)
    images = torch.stack([ds[i].image for i in range(len(ds))])
    labels = [ds[i].label for i in range(len(ds))]
    imp = chip_fast.distill_all_classes(model, (images, torch.tensor(labels)), None,
                                        samples_per_class=256, progress=False)
    batches = list(zip(images.split(args.batch), torch.tensor(labels).split(args.batch)))
    chip_fast.explain(model, imp, *batches[0])          # trace and fingerprint check, once
    rows = chunk_rows(model, images.shape[-1]) or len(images)
    with torch.inference_mode():
        forward = per_image_ms(lambda x, c: model(x), batches)
        forward_chunked = per_image_ms(lambda x, c: run_in_chunks(lambda t: (model(t),), x, rows),
                                       batches)
    peers = peer_speeds(model, batches, args.batch) if args.peers else {}
    results = {"explain_ms_per_image": per_image_ms(
        lambda x, c: chip_fast.explain(model, imp, x, c), batches),
        "forward_ms_per_image": forward,
        # the same forward in the chunks of rows chip_fast runs a CPU prefix in
        "forward_in_chunks_ms_per_image": forward_chunked, "chunk_rows": rows,
        "peers": peers, "photos": len(images), "batch": args.batch,
        "layers": imp.layers, "threads": torch.get_num_threads(), "cpus": usable_cpus(),
        "command": f"python -m benchmarks.jobs explain_speed --photos {args.photos} "
                   f"--batch {args.batch}"}
    write_result("explain_speed_cpu", results, root=args.out)
