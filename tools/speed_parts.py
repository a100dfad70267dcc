"""Parts of tools/gpu_engine_check.py about speed against what bounds it: the device's own
ceilings, the plain PyTorch loop a user would write, the VGG16 conv5_3 projection to 10^8
perturbed networks, and JPEG decoding for an ImageNet-sized job.

Each part takes the ``Context`` (tools/engine_parts.py) and returns its record.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import torch

from chip_fast.util.cpus import usable_cpus
from tools.engine_parts import Context, _job, _run, sync


def _rate(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def ceilings(ctx: Context) -> dict:
    """The device's own ceilings, measured: dense bf16 matmul (8192^3), float32 matmul in the
    precision the prefix's convolutions run in (TF32 on CUDA, PyTorch's default for cuDNN), and
    device-to-device copy bandwidth (read + write)."""
    dev = ctx.device
    n = 8192 if ctx.cuda else 512
    out = {}
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16 if ctx.cuda else torch.float32)
    out["matmul_bf16_tflops"] = 2 * n ** 3 / _rate(lambda: a @ a, dev, 10) / 1e12
    a = a.float()
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        out["matmul_prefix_dtype_tflops"] = 2 * n ** 3 / _rate(lambda: a @ a, dev, 5) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    out["prefix_dtype"] = ("tf32" if ctx.cuda and torch.backends.cudnn.allow_tf32 else "float32")
    size = (2**30 if ctx.cuda else 2**26) // 4
    src, dst = torch.empty(size, device=dev), torch.empty(size, device=dev)
    out["copy_tb_per_s"] = 2 * 4 * size / _rate(lambda: dst.copy_(src), dev, 10) / 1e12
    del a, src, dst
    if not ctx.cuda:
        out["matmul_bf16_tflops_note"] = "float32 on a CPU"
    dense = "bf16" if ctx.cuda else "float32"
    return {"status": "ok", "summary": f"{dense} matmul {out['matmul_bf16_tflops']:.1f} TFLOP/s, "
            f"the prefix's {out['prefix_dtype']} {out['matmul_prefix_dtype_tflops']:.1f} TFLOP/s, "
            f"copy {out['copy_tb_per_s']:.2f} TB/s", **out}


def _plain_rate(ctx: Context, model_name: str, layer: str, batch: int) -> dict:
    """The loop a user writes in PyTorch for the same estimand: the prefix once per view, then
    per batch Bernoulli(0.5) masks drawn on the device, zero fill, the tail's weights and input
    in the engine's tail dtype (bf16 on a GPU and on a CPU with native bf16, float32 on
    other CPUs), channels-last, the logit minus half the view's unperturbed one,
    float64 sums of z*y, y and y^2. Microseconds per perturbed network, warm."""
    import copy
    from chip_fast.distill.settings import DistillSettings, resolve_settings
    from chip_fast.models.split import SplitModel
    dev = ctx.device
    split = SplitModel(ctx.model(model_name), [layer])
    dtype_name = resolve_settings(DistillSettings(), dev).tail_dtype   # the engine's choice
    dtype = getattr(torch, dtype_name)
    # A copy: the split's tail shares its modules with the model the other parts run.
    tail = copy.deepcopy(split.tails[layer].module).to(dtype=dtype,
                                                        memory_format=torch.channels_last)
    views = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.inference_mode():
        acts = split.activation(split.run_prefix(views), layer)
        acts = acts.to(dtype).contiguous(memory_format=torch.channels_last)
        y0 = tail(acts.clone()).float()
        k = acts.shape[1]
        cls = torch.arange(batch, device=dev) % y0.shape[1]
        view = torch.arange(batch, device=dev) % len(views)
        szy = torch.zeros(y0.shape[1], k, dtype=torch.float64, device=dev)
        sy = torch.zeros(y0.shape[1], dtype=torch.float64, device=dev)

        def one_batch():
            z = torch.rand(batch, k, device=dev, generator=g) < 0.5
            pert = acts[view] * z[:, :, None, None].to(acts.dtype)
            y = tail(pert).float().gather(1, cls[:, None])[:, 0] - 0.5 * y0[view, cls]
            y = y.double()
            szy.index_add_(0, cls, z.double() * y[:, None])
            sy.index_add_(0, cls, y)
        repeats = 3 if ctx.quick else 20
        seconds = _rate(one_batch, dev, repeats)
    return {"us_per_network": seconds / batch * 1e6, "batch": batch, "dtype": dtype_name}


def plain(ctx: Context) -> dict:
    """The plain loop at MobileNetV2 features.14.conv.0 and VGG16 features.29, at batch 256
    and 1,024 on a GPU (64 on a CPU); the faster batch counts."""
    batches = (64,) if ctx.quick else (256, 1024)
    out = {}
    for key, model, layer in (("mobilenet_v2", "mobilenet_v2", "features.14.conv.0"),
                              ("vgg16", "vgg16", "features.29")):
        runs = [_plain_rate(ctx, model, layer, b) for b in batches]
        out[key] = min(runs, key=lambda r: r["us_per_network"]) | {"layer": layer, "runs": runs}
    dtype = {"bfloat16": "bf16"}.get(out["mobilenet_v2"]["dtype"], "float32")
    return {"status": "ok", "summary": f"plain {dtype} channels-last loop: MobileNetV2 "
            f"features.14.conv.0 {out['mobilenet_v2']['us_per_network']:.2f} us per network, "
            f"VGG16 features.29 {out['vgg16']['us_per_network']:.2f} us (batch "
            f"{out['vgg16']['batch']})", **out}


def _floors(ctx: Context, flops: float, bytes_per_sample: float) -> dict:
    ceil = ctx.parts.get("ceilings", {})
    out = {}
    if ceil.get("matmul_bf16_tflops"):
        out["flops_s"] = 1e8 * flops / (ceil["matmul_bf16_tflops"] * 1e12)
    if ceil.get("copy_tb_per_s"):
        out["memory_s"] = 1e8 * bytes_per_sample / (ceil["copy_tb_per_s"] * 1e12)
    return out


def vgg(ctx: Context) -> dict:
    """VGG16 features.29 (conv5_3 + ReLU, random weights) at the default batch size: the slope
    per perturbed network between two job sizes that differ by many batches (each job
    captures its graphs once; the difference cancels that), after a warm-up job; projected to
    10^8 networks, beside the floors from the measured ceilings."""
    from torch.utils.flop_counter import FlopCounterMode
    from chip_fast.models.split import SplitModel
    model = ctx.model("vgg16")
    layer = "features.29"
    classes = 4 if ctx.quick else 16
    images = torch.randn(classes, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    data = (images, torch.arange(classes))
    small, large = (64, 192) if ctx.quick else (512, 4096)

    def seconds(samples: int) -> tuple[float, int, str]:
        job = _job(ctx, model, data, layer, samples_per_class=samples, samples_per_unit=samples,
                   classes_per_unit=classes, fill_stats_views=classes)
        return _run(job), job.settings.batch_size, job.plan.paths[layer]
    seconds(small)
    (t_small, batch, path), (t_large, _, _) = seconds(small), seconds(large)
    slope = (t_large - t_small) / (classes * (large - small))
    split = SplitModel(model, [layer])
    with torch.inference_mode():
        x = images[:1].to(ctx.device)
        act = split.activation(split.run_prefix(x), layer)
        with FlopCounterMode(display=False) as prefix_count:
            split.run_prefix(x)
        tail_flops, bytes_per_sample = _tail_cost(split, layer, act, path)
    floors = _floors(ctx, tail_flops, bytes_per_sample)
    out = {"layer": f"vgg16 {layer}", "path": path, "batch": batch,
           "samples": [classes * small, classes * large],
           "slope_us_per_network": slope * 1e6, "projected_1e8_s": 1e8 * slope,
           "tail_gflop_per_network": tail_flops / 1e9,
           "prefix_gflop_per_photo": prefix_count.get_total_flops() / 1e9,
           "perturbed_bytes_per_network": bytes_per_sample, "floors_1e8_s": floors,
           "bound": max(floors, key=floors.get) if floors else None}
    floor_text = ", ".join(f"{k[:-2]} floor {v:.1f} s" for k, v in floors.items())
    return {"status": "ok", "summary": f"{slope * 1e6:.2f} us per network ({path} path) at "
            f"batch {batch} "
            f"(slope {classes * small}->{classes * large} networks): 10^8 in "
            f"{1e8 * slope:.0f} s; {floor_text}", **out}


def _tail_cost(split, layer: str, act: torch.Tensor, path: str) -> tuple[float, float]:
    """(FLOPs, bytes) per perturbed network on the job's path: the whole tail on a perturbed
    activation (bf16, written once and read once), or on the head path (``linear_head``) the
    (K) x (K, O) product, the layers after the Linear and the (K,) mask."""
    from torch.utils.flop_counter import FlopCounterMode
    if path == "linear_head":
        from chip_fast.distill.linear_head import linear_head
        head = linear_head(split, layer, act)
        k, _, o = head.weight.shape
        with FlopCounterMode(display=False) as rest:
            head.rest(torch.zeros(1, o, device=act.device))
        return 2 * k * o + rest.get_total_flops(), 4 * k
    with FlopCounterMode(display=False) as count:
        split.run_tail(layer, act.clone(), {}, torch.zeros(1, dtype=torch.long,
                                                           device=act.device))
    return count.get_total_flops(), act[0].numel() * 2 * 2


def _jpeg(seed: int = 0) -> bytes:
    """A 500x375 photo-like JPEG (smooth colour fields and noise: real JPEG entropy)."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g),
                                           size=(375, 500), mode="bilinear")[0]
    img = ((base * 0.8 + 0.2 * torch.rand(3, 375, 500, generator=g)) * 255).byte()
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _folder_job(ctx: Context, root: Path, data: list[bytes], classes: int) -> dict:
    """A small distillation that reads a folder with decode_device="cuda"."""
    import chip_fast
    from chip_fast import ImageFolderSource
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i, d in enumerate(data):
            (root / f"class{c}" / f"{i}.JPEG").write_bytes(d)
    source = ImageFolderSource(root, decode_device=ctx.device)
    t0 = time.perf_counter()
    imp = chip_fast.distill_all_classes(ctx.model("mobilenet_v2"), source, ["features.18"],
                                        samples_per_class=256, progress=False,
                                        device=ctx.device)
    return {"works": bool(torch.isfinite(imp.r["features.18"]).all()),
            "job_s": time.perf_counter() - t0, "photos": classes * len(data)}


def decode(ctx: Context) -> dict:
    """JPEG decode rates: PIL on every CPU this process may use, torchvision's batched nvJPEG
    on the GPU; decode_device="cuda" through an ImageFolderSource in a small job; what the
    1.28 M photos of ILSVRC train cost to decode and to run through VGG16's prefix at the
    measured rate of the dtype it runs in."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from PIL import Image
    data = [_jpeg(i) for i in range(8)]
    n = 64 if ctx.quick else 512
    cpus = usable_cpus()
    with ThreadPoolExecutor(cpus) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda d: Image.open(io.BytesIO(d)).convert("RGB").load(),
                      [data[i % 8] for i in range(n)]))
        pil = n / (time.perf_counter() - t0)
    out = {"pil_photos_per_s": pil, "cpus": cpus, "nvjpeg_photos_per_s": None}
    if ctx.cuda:
        from torchvision.io import decode_jpeg
        raw = [torch.frombuffer(bytearray(data[i % 8]), dtype=torch.uint8) for i in range(n)]
        out["nvjpeg_photos_per_s"] = n / _rate(lambda: decode_jpeg(raw, device=ctx.device),
                                               ctx.device, 3)
        with tempfile.TemporaryDirectory() as tmp:
            out["folder_job"] = _folder_job(ctx, Path(tmp), data, 4)
    rate = out["nvjpeg_photos_per_s"] or pil
    vgg_part = ctx.parts.get("vgg", {})
    ceil = ctx.parts.get("ceilings", {})
    photos = 1.28e6
    out["imagenet_decode_s"] = photos / rate
    if vgg_part.get("prefix_gflop_per_photo") and ceil.get("matmul_prefix_dtype_tflops"):
        out["imagenet_vgg_prefix_floor_s"] = (photos * vgg_part["prefix_gflop_per_photo"] * 1e9
                                              / (ceil["matmul_prefix_dtype_tflops"] * 1e12))
    text = f"PIL {pil:.0f} photos/s on {cpus} CPUs"
    if out["nvjpeg_photos_per_s"]:
        text += f", nvJPEG batched {out['nvjpeg_photos_per_s']:.0f} photos/s"
        job = out["folder_job"]
        text += (f"; decode_device=cuda job {'works' if job['works'] else 'FAILS'} "
                 f"({job['photos']} photos, {job['job_s']:.1f} s)")
    text += f"; ILSVRC train decode {out['imagenet_decode_s']:.0f} s"
    if "imagenet_vgg_prefix_floor_s" in out:
        text += f", VGG16 prefix floor {out['imagenet_vgg_prefix_floor_s']:.0f} s"
    status = "fail" if ctx.cuda and not out["folder_job"]["works"] else "ok"
    return {"status": status, "summary": text, **out}
