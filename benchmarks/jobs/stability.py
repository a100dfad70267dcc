"""Time to a stable importance: how well two seeds agree, and what it costs next to one plain
pass over the same photos (the headline benchmark; docs/stability.md reads its results).

For each estimator configuration and sample count, two distillations that differ only in the
seed; per layer the median over classes of the Pearson r of a class's W row and the mean overlap
of its 10 largest weights, between the seeds and against the layer's limit: the exact estimator
where the tail is affine (its closed form), else a long independent-mask run. The wall time of
each distillation is divided by the mean of the plain passes timed just before and after it
(PIL decode, Resize 256, CenterCrop 224, float32, channels-last, batches of 64 per class, the
whole forward), and by the same plain pass with its forward in the chunks of rows chip_fast
runs a prefix in on a CPU (chip_fast.models.row_chunks): the same trick on the user's side,
so the table shows how much of the ratio is that trick, and by the plain pass with its forward
under bfloat16 autocast: where chip_fast runs its prefix and tails in bf16 (CPUs with native
bf16), the same precision on the user's side. A neighbour's load slows the two
sides unequally (the plain pass far more), so each ratio is also given in CPU seconds (user +
system, every thread of the process), which a neighbour barely moves: the wall ratio is the
user's, the CPU ratio the one to compare between runs made in different machine states.

    python -m benchmarks.jobs stability                  # MobileNetV2, imagenette
    python -m benchmarks.jobs stability --arch efficientnet_lite0 --samples 2048
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

import chip_fast
from chip_fast.models.fingerprint import model_fingerprint
from chip_fast.models.row_chunks import run_in_chunks

from .record import write_result

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# name -> distill_all_classes keywords (besides samples and seed)
CONFIGS = {
    "default": {},                     # exact where affine, orthogonal masks, view slopes
    "sampled-antithetic": {"estimator": "sampled", "masks": "antithetic"},
    "antithetic": {"masks": "antithetic"},          # the previous default: exact + antithetic
    "sampled-independent": {"estimator": "sampled", "masks": "independent"},   # before
    # distil until stable: the samples are a cap, each class stops at predicted r 0.95
    "until-stable-0.95": {"until_stable": 0.95},
    # the default with float32 tails, where "auto" picks bfloat16 (CPUs with native bf16)
    "float32-tails": {"tail_dtype": "float32"},
    # the default with a float32 prefix, where "auto" picks bfloat16 (CPUs with native bf16):
    # the defaults before the results named *bf16_prefix*
    "float32-prefix": {"prefix_dtype": "float32"},
    # the view-slope control variate, the default since the results named *default_view_slopes*
    # (it was the default for an hour before, and results of then named *view_slopes* call it
    # "default"; the other results' "default" rows are "no-control")
    "view-slopes": {"control": "view_slopes"},
    "no-control": {"control": "none"},
    "until-stable-0.95-view-slopes": {"until_stable": 0.95, "control": "view_slopes"},
    "until-stable-0.95-no-control": {"until_stable": 0.95, "control": "none"},
    # every layer on the elementwise path: the 14x14 layer's whole tail per perturbed network
    # (no chain_per_view), and features.18 sampled too (no affine path, so no exact estimator):
    # not the default before the chain (that is a run of the commit before it), but the same
    # estimand at the 14x14 layer with the chain's view slopes against the activation's
    "elementwise": {"tail_path": "elementwise"},
    "view-slopes-elementwise": {"control": "view_slopes", "tail_path": "elementwise"},
    # another estimand: a milder perturbation (pairs and designs need p_keep 0.5: independent)
    "p-keep-0.75": {"p_keep": 0.75},
}


class Clock:
    """Wall and CPU seconds (user + system over all threads of the process) of a block."""

    def __enter__(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def plain_pass(model: torch.nn.Module, source: chip_fast.ImageFolderSource, batch: int = 64,
               chunk: int | None = None, bf16: bool = False) -> Clock:
    """Wall and CPU seconds of one pass a user would write: decode, resize, crop, normalise,
    forward. ``chunk``: the forward of each batch in chunks of that many rows, the way
    chip_fast runs a prefix on a CPU (chip_fast.models.row_chunks); ``bf16``: the forward
    under bfloat16 autocast, PyTorch's own way to use a CPU's bf16 instructions (what a user
    compares with a distillation whose prefix and tails run in bf16)."""
    from PIL import Image
    from torchvision import transforms as T
    prep = source.preprocess
    tf = T.Compose([T.Resize(prep.resize), T.CenterCrop(prep.size), T.ToTensor(),
                    T.Normalize(prep.mean, prep.std)])
    with Clock() as clock, torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                                   enabled=bf16):
        for c in source.classes:
            files = source.files[c]
            for i in range(0, len(files), batch):
                x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i:i + batch]])
                x = x.contiguous(memory_format=torch.channels_last)
                run_in_chunks(lambda t: (model(t),), x, chunk or len(x))
    return clock


def chunk_rows(model: torch.nn.Module, size: int) -> int | None:
    """The rows per chunk chip_fast's rule gives the whole model on ``size`` x ``size`` photos
    (None: whole batches)."""
    from chip_fast.models.row_chunks import model_rows
    return model_rows(model, torch.zeros(1, 3, size, size))


def agreement(a: torch.Tensor, b: torch.Tensor, classes: list[int]) -> dict[str, float]:
    """Median over classes of the Pearson r of their W rows, mean top-10 overlap."""
    rs, overlap = [], []
    for c in classes:
        x, y = a[c].double(), b[c].double()
        rs.append(float(torch.corrcoef(torch.stack([x, y]))[0, 1]) if x.std() * y.std() > 0
                  else 0.0)
        overlap.append(len(set(x.abs().topk(10).indices.tolist())
                           & set(y.abs().topk(10).indices.tolist())) / 10)
    return {"median_r": median(rs), "top10": sum(overlap) / len(overlap)}


def distill(model, source, n: int, seed: int, config: dict, layers=None) -> tuple:
    with Clock() as clock:
        imp = chip_fast.distill_all_classes(model, source, layers, samples_per_class=n,
                                            seed=seed, progress=False, **config)
    return imp, clock


def references(model, source, reference: int, cache: Path | None
               ) -> tuple[dict[str, torch.Tensor], dict]:
    """Each default layer's limit, from one run: the exact estimator where the tail is affine,
    a long run of independent masks (the design no configuration compared here uses) else.
    Kept in ``cache`` (a .chip file named by what it depends on) for the next run."""
    key = f"{model_fingerprint(model)['sha256'][:16]}_{len(source.classes)}_{reference}.chip"
    if cache is not None and (cache / key).is_file():
        long = chip_fast.load_importance(cache / key)
        return dict(long.weights), {"estimators": long.settings["estimators"], "cached": True}
    long, clock = distill(model, source, reference, 99,
                          {"masks": "independent", "control": "none"})
    if cache is not None:
        long.save(cache / key)
    return dict(long.weights), {"estimators": long.settings["estimators"], "seconds": clock.wall}


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = chip_fast.load_model(args.arch, args.weights, "cpu")
    source = chip_fast.ImageFolderSource(args.data, preprocess=chip_fast.preprocess_of(model))
    layers = chip_fast.default_layers(model)
    chunk = chunk_rows(model, source.preprocess.size)
    plain_pass(model, source)   # warm-up: file cache, thread pools, kernels
    refs, ref_info = references(model, source, args.reference, args.cache)
    # the yardsticks, each timed before the first distillation and after every one
    sticks = {"plain": {}, "chunked": {"chunk": chunk}, "bf16": {"bf16": True}}
    rows, last = [], {k: plain_pass(model, source, **kw) for k, kw in sticks.items()}
    first: dict[int, chip_fast.Importance] = {}   # samples -> the first config's first seed
    for name in args.configs:
        for n in args.samples:
            runs = []
            for seed in args.seeds:
                imp, clock = distill(model, source, n, seed, CONFIGS[name] | args.extra)
                now = {k: plain_pass(model, source, **kw) for k, kw in sticks.items()}
                runs.append((imp, clock, *(((last[k].wall + now[k].wall) / 2,
                                            (last[k].cpu + now[k].cpu) / 2) for k in sticks)))
                last = now
            (a, ta, pa, qa, ba), (b, tb, pb, qb, bb) = runs[:2]
            base = first.setdefault(n, a)
            rows.append({
                "config": name, "samples_per_class": n, "tail_dtype": a.settings["tail_dtype"],
                "prefix_dtype": a.settings.get("prefix_dtype", "float32"),
                "seconds": [ta.wall, tb.wall],
                "plain_pass_seconds": [pa[0], pb[0]],
                "cost_in_plain_passes": (ta.wall / pa[0] + tb.wall / pb[0]) / 2,
                "cpu_seconds": [ta.cpu, tb.cpu], "plain_pass_cpu_seconds": [pa[1], pb[1]],
                "cpu_cost_in_plain_passes": (ta.cpu / pa[1] + tb.cpu / pb[1]) / 2,
                # the same plain pass with its forward in chip_fast's CPU chunks
                "chunk_rows": chunk, "chunked_plain_pass_seconds": [qa[0], qb[0]],
                "chunked_plain_pass_cpu_seconds": [qa[1], qb[1]],
                "cost_in_chunked_plain_passes": (ta.wall / qa[0] + tb.wall / qb[0]) / 2,
                "cpu_cost_in_chunked_plain_passes": (ta.cpu / qa[1] + tb.cpu / qb[1]) / 2,
                # the same plain pass with its forward under bfloat16 autocast
                "bf16_plain_pass_seconds": [ba[0], bb[0]],
                "bf16_plain_pass_cpu_seconds": [ba[1], bb[1]],
                "cost_in_bf16_plain_passes": (ta.wall / ba[0] + tb.wall / bb[0]) / 2,
                "cpu_cost_in_bf16_plain_passes": (ta.cpu / ba[1] + tb.cpu / bb[1]) / 2,
                "layers": {l: {"estimator": a.settings["estimators"][l],
                               "seeds": agreement(a.weights[l], b.weights[l], a.classes),
                               "limit": agreement(a.weights[l], refs[l], a.classes),
                               # same seed, the first configuration: do both give one answer?
                               "first_config": agreement(a.weights[l], base.weights[l],
                                                         a.classes)}
                           for l in layers}})
            if "samples_reached" in a.settings:
                reached = a.settings["samples_reached"] + b.settings["samples_reached"]
                rows[-1]["samples_reached"] = {"median": median(reached), "min": min(reached),
                                               "max": max(reached), "per_seed": [
                                                   a.settings["samples_reached"],
                                                   b.settings["samples_reached"]]}
            print(json.dumps(rows[-1]), flush=True)
    return {"arch": args.arch, "data": str(args.data), "classes": len(source.classes),
            "photos": sum(source.count(c) for c in source.classes),
            "reference_samples": args.reference, "reference": ref_info,
            "threads": torch.get_num_threads(),
            "rows": rows}


def markdown(result: dict) -> str:
    layers = list(result["rows"][0]["layers"])
    head = " | ".join(f"{l}: seeds r / top-10, vs limit r" for l in layers)
    lines = [f"| estimator | samples per class | {head} | cost (plain passes): wall, CPU "
             "| against the plain pass in chunks (rows): wall, CPU "
             "| against the plain pass in bf16 autocast: wall, CPU "
             "| same seed as the first row, r per layer |", "|---" * (6 + len(layers)) + "|"]
    for row in result["rows"]:
        cells = []
        for l in layers:
            d = row["layers"][l]
            tag = " (exact)" if d["estimator"] == "exact" else ""
            cells.append(f"{d['seeds']['median_r']:.3f} / {d['seeds']['top10']:.2f}, "
                         f"{d['limit']['median_r']:.3f}{tag}")
        n = f"{row['samples_per_class']:,}"
        if "samples_reached" in row:
            r = row["samples_reached"]
            n = f"cap {n}: median {r['median']:,.0f} ({r['min']:,}-{r['max']:,})"
        cpu = row.get("cpu_cost_in_plain_passes")   # absent from results made before
        dtype = f" ({row['tail_dtype']} tails)" if "tail_dtype" in row else ""
        if "prefix_dtype" in row:   # absent from results made before the setting
            dtype = dtype[:-1] + f", {row['prefix_dtype']} prefix)"
        same = " / ".join(f"{row['layers'][l]['first_config']['median_r']:.4f}"
                          for l in layers if "first_config" in row["layers"][l]) or "-"
        chunked = (f"{row['cost_in_chunked_plain_passes']:.2f}, "
                   f"{row['cpu_cost_in_chunked_plain_passes']:.2f} ({row['chunk_rows']})"
                   if "chunk_rows" in row else "-")
        bf16 = (f"{row['cost_in_bf16_plain_passes']:.2f}, "
                f"{row['cpu_cost_in_bf16_plain_passes']:.2f}"
                if "cost_in_bf16_plain_passes" in row else "-")   # results made before
        lines.append(f"| {row['config']}{dtype} | {n} | {' | '.join(cells)} "
                     f"| {row['cost_in_plain_passes']:.2f}, "
                     f"{'-' if cpu is None else f'{cpu:.2f}'} | {chunked} | {bf16} | {same} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="mobilenet_v2")
    p.add_argument("--weights", default=None, help="default: the real MobileNetV2 of "
                                                   "../shared/data for mobilenet_v2")
    p.add_argument("--data", type=Path, default=DATA / "imagenette" / "train")
    p.add_argument("--configs", default="default,sampled-antithetic,sampled-independent")
    p.add_argument("--samples", default="2048,8192")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--reference", type=int, default=16384,
                   help="samples per class of the long run at layers without a closed form")
    p.add_argument("--cache", type=Path,
                   default=Path(tempfile.gettempdir()) / "chip_fast_stability",
                   help="where the long reference run is kept between runs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on both sides (default: torch's); 1 takes the spinning "
                        "of idle worker threads out of the CPU seconds when other jobs share "
                        "the machine")
    p.add_argument("--prefix-dtype", default=None, choices=("float32", "bfloat16"),
                   help="every config's prefix dtype (default: the config's; rows measured "
                        "before the bf16 prefix existed rerun with float32)")
    p.add_argument("--name", default=None, help="results name (default: <arch>)")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",")]
    args.samples = [int(s) for s in args.samples.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.extra = {"prefix_dtype": args.prefix_dtype} if args.prefix_dtype else {}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.weights is None and args.arch == "mobilenet_v2":
        args.weights = DATA / "weights" / "mobilenet_v2_imagenet1k.pth"
    result = run(args)
    write_result(f"stability/{args.name or args.arch}", result, markdown(result),
                 **({"root": args.out} if args.out else {}))


if __name__ == "__main__":
    main()
