"""The channel atlas as a reader sees it: for a class, its top channels, each as a strip of the
distillation patches where the channel fires most and, optionally, where it fires on the photo
being explained. Shared by the demo's report and ``chip-fast atlas show``.

Owns the PNG strips and the HTML of atlas rows; the atlas itself is ``chip_fast.atlas.collect``'s.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .collect import ChannelAtlas, top_channels
from ..report.overlay import blend, save_png

if TYPE_CHECKING:
    from ..importance.core import Importance

SHOWN_PX = 72   # a patch's side on the page

ATLAS_CSS = """
.atlas { border-collapse: collapse; margin: 0.3em 0 1em 0; }
.atlas td { padding: 3px 6px; vertical-align: middle; border-top: 1px solid #eee; }
.atlas .ch { font-family: monospace; font-size: 0.85em; white-space: nowrap; }
.atlas .src { font-size: 0.75em; color: #666; max-width: 220px; }
.atlas img.strip { height: 72px; display: block; image-rendering: auto; }
.atlas img.here { width: 72px; height: 72px; display: block; }
"""


@dataclass
class AtlasRow:
    """One channel of a class: its weight, its strip of patches and where they come from."""
    layer: str
    channel: int
    weight: float
    strip: str                 # file name of the patch strip PNG
    sources: list[str]         # class name of each patch's distillation photo
    here: str | None = None    # file name of the channel's overlay on the explained photo


def strip_png(atlas: ChannelAtlas, layer: str, channel: int, path: Path,
              shown_px: int = SHOWN_PX, gap: int = 3) -> Path | None:
    """The channel's filled patches side by side (strongest first) as one PNG; None if empty."""
    from PIL import Image
    a = atlas.layers[layer]
    n = int(a.count()[channel])
    if n == 0:
        return None
    strip = Image.new("RGB", (n * shown_px + (n - 1) * gap, shown_px), (255, 255, 255))
    for j in range(n):
        patch = Image.fromarray(a.patch[channel, j].numpy())
        strip.paste(patch.resize((shown_px, shown_px), Image.BICUBIC), (j * (shown_px + gap), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    strip.save(path)
    return path


def class_rows(atlas: ChannelAtlas, importance: Importance, cls: int, out_dir: Path,
               prefix: str, class_names: list[str], n: int = 5, layers: list[str] | None = None,
               photo: np.ndarray | None = None, channel_heat=None) -> list[AtlasRow]:
    """The atlas rows of class ``cls``: its ``n`` top channels per layer, strips written into
    ``out_dir`` as ``{prefix}_{layer}_{channel}.png``. With ``photo`` (H, W, 3 uint8) and
    ``channel_heat(layer, channels) -> (len(channels), H, W)`` in [0, 1], each row also gets
    the channel's map on the photo."""
    rows = []
    for layer in layers or [l for l in importance.layers if l in atlas.layers]:
        chosen = top_channels(importance, layer, cls, n)
        heat = channel_heat(layer, [t.channel for t in chosen]) if photo is not None and chosen \
            else None
        slug = layer.replace(".", "")
        for i, (ch, w, _) in enumerate(chosen):
            name = f"{prefix}_{slug}_{ch}.png"
            if strip_png(atlas, layer, ch, out_dir / name) is None:
                continue
            keys = atlas.layers[layer].key[ch]
            sources = [class_names[c] if 0 <= c < len(class_names) else f"class {c}"
                       for c, _ in keys.tolist() if c >= 0]
            here = None
            if heat is not None:
                here = f"{prefix}_{slug}_{ch}_here.png"
                save_png(blend(photo / 255.0, heat[i], opacity=0.7), out_dir / here)
            rows.append(AtlasRow(layer, ch, w, name, sources, here))
    return rows


def patch_note(atlas: ChannelAtlas) -> str:
    """An HTML line saying what area each layer's patches show: the side recorded with the atlas
    (the measured effective receptive field, or a fixed number of strides)."""
    how = "fixed" if atlas.patch_scale is not None else "the layer's measured effective " \
        "receptive field (80% of a cell's input gradient)"
    sides = ", ".join(f"{html.escape(l)} {s:.1f}" for l, s in atlas.sides.items()
                      if l in atlas.layers)
    if not sides:
        return ""
    return f'<p class="muted">Patch sides, in strides of the layer: {sides} ({how}).</p>'


def _short(name: str) -> str:
    return name.split(",")[0]


def rows_html(rows: list[AtlasRow]) -> str:
    """An HTML table: layer and channel, weight, the patch strip, where the patches come from
    and (if made) where the channel fires on the explained photo."""
    if not rows:
        return '<p class="muted">no channel of positive importance</p>'
    esc = html.escape
    here_head = "<th>on this photo</th>" if any(r.here for r in rows) else ""
    out = [f'<table class="atlas"><tr><th>channel</th><th>where it fires most in the '
           f'distillation photos</th>{here_head}<th>from photos of</th></tr>']
    for r in rows:
        counts: dict[str, int] = {}
        for s in r.sources:
            counts[_short(s)] = counts.get(_short(s), 0) + 1
        src = ", ".join(f"{esc(k)}" + (f" ×{v}" if v > 1 else "") for k, v in counts.items())
        here = (f'<td><img class="here" src="{esc(r.here)}" alt="channel {r.channel} on this '
                f'photo"></td>' if r.here else ("<td></td>" if here_head else ""))
        out.append(f'<tr><td class="ch">{esc(r.layer)}<br>ch {r.channel}<br>W {r.weight:+.3g}'
                   f'</td><td><img class="strip" src="{esc(r.strip)}" alt="patches of channel '
                   f'{r.channel}"></td>{here}<td class="src">{src}</td></tr>')
    return "".join(out) + "</table>"
