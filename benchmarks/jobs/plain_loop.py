"""The CHIP distillation loop a user would write in plain PyTorch: the baseline chip_fast is
measured against (vs_plain_loop).

    python -m benchmarks.jobs plain_loop --data FOLDER --layer features.18 --samples 4096 --out w.pt

MobileNetV2 with the real weights of ../shared/data. For every photo of the folder (the
``train/<wnid>/`` layout) the layer's activation; per channel the mean and std over them; then
per class, batches of 256 perturbed networks: Bernoulli(0.5) keep masks, N(mu, sigma) noise in
the dropped channels, the tail of the network written out by hand, the class's logit, and the
running sums of z, z z^T, z y and y; at the end the Lasso of every class by FISTA (alpha = 0.1
of lambda_max), as METHOD.md describes. Sample i of a class uses photo i * n_photos // N.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms as T

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
WEIGHTS = DATA / "weights" / "mobilenet_v2_imagenet1k.pth"
# The class order from the data, not from chip_fast: the plain loop is what a user writes without
# the library, so it reads nothing of the library's files.
WNIDS = DATA / "imagenet-val-dev" / "LOC_synset_mapping.txt"


def load_photos(folder: Path) -> dict[int, torch.Tensor]:
    """class index -> (n, 3, 224, 224) preprocessed photos."""
    wnids = [line.split()[0] for line in WNIDS.read_text().splitlines() if line.strip()]
    prep = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    out = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(d.iterdir())
        out[wnids.index(d.name)] = torch.stack([prep(Image.open(f).convert("RGB"))
                                                for f in files])
    return out


def split_mobilenet_v2(model: torch.nn.Module, layer: str):
    """(prefix, tail) of MobileNetV2 at features.18 or features.14.conv.0, written by hand."""
    f = model.features

    def head(x):
        return model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
    if layer == "features.18":
        return (lambda x: f(x)), head
    if layer == "features.14.conv.0":
        def prefix(x):
            return f[14].conv[0](f[:14](x))

        def tail(a):
            x = f[14].conv[3](f[14].conv[2](f[14].conv[1](a)))
            return head(f[15:](x))
        return prefix, tail
    raise SystemExit(f"this plain loop knows features.18 and features.14.conv.0, not {layer}")


def fista(gram: torch.Tensor, r: torch.Tensor, alpha: float, iters: int = 5000,
          tol: float = 1e-6) -> torch.Tensor:
    """min 1/2 w'Gw - r'w + lam |w|_1 for every row of r (C, K), lam = alpha * |r_c|_inf."""
    lam = alpha * r.abs().amax(1, keepdim=True)
    step = 1.0 / torch.linalg.eigvalsh(gram).max()
    w = torch.zeros_like(r)
    v, t = w.clone(), 1.0
    for _ in range(iters):
        u = v - step * (v @ gram - r)
        w_next = torch.sign(u) * torch.clamp(u.abs() - step * lam, min=0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        v = w_next + (t - 1) / t_next * (w_next - w)
        done = (w_next - w).abs().max() <= tol * w_next.abs().max().clamp(min=1e-12)
        w, t = w_next, t_next
        if done:
            break
    return w


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--layer", default="features.18")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="plain_weights.pt")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    model.eval()
    prefix, tail = split_mobilenet_v2(model, args.layer)
    photos = load_photos(Path(args.data))
    with torch.no_grad():
        acts = {c: torch.cat([prefix(x[i:i + 64]) for i in range(0, len(x), 64)])
                for c, x in photos.items()}
        every = torch.cat(list(acts.values())).transpose(0, 1).flatten(1)
        mu, sigma = every.mean(1), every.std(1)
        k = mu.numel()
        n = args.samples
        sums = {}
        for c, a in acts.items():
            sz = torch.zeros(k, dtype=torch.float64)
            szz = torch.zeros(k, k, dtype=torch.float64)
            szy = torch.zeros(k, dtype=torch.float64)
            sy = torch.zeros((), dtype=torch.float64)
            for i0 in range(0, n, args.batch):
                i = torch.arange(i0, min(i0 + args.batch, n))
                base = a[i * len(a) // n]
                z = torch.rand(len(i), k) < 0.5
                noise = mu[None, :, None, None] + sigma[None, :, None, None] * torch.randn_like(base)
                pert = torch.where(z[:, :, None, None], base, noise)
                y = tail(pert)[:, c].double()
                zd = z.double()
                sz += zd.sum(0)
                szz += zd.t() @ zd
                szy += zd.t() @ y
                sy += y.sum()
            sums[c] = (sz, szz, szy, sy)
        rows, grams = [], []
        for c, (sz, szz, szy, sy) in sums.items():
            zbar, ybar = sz / n, sy / n
            grams.append(szz / n - torch.outer(zbar, zbar))
            rows.append(szy / n - ybar * zbar)
        # Masks differ per class here, so each class has its own Gram matrix and solve.
        weights = torch.stack([fista(g, r[None], 0.1)[0] for g, r in zip(grams, rows)])
    torch.save({"classes": list(sums), "weights": weights.float(), "layer": args.layer}, args.out)
    print(f"plain loop: {len(sums)} classes x {n} samples at {args.layer} in "
          f"{time.perf_counter() - t0:.1f} s (in process)")
