"""HTML pages of runs: the ``index.html`` of a ``chip-fast explain`` run, and small shared pieces
(the page around a body, a top-classes table).

Owns the markup of those pages, and the bar chart of a class's top channels; which channels
those are is ``chip_fast.atlas.collect.top_channels``' (the same channels the demo's atlas shows). The
overlays it links are written by ``chip_fast.maps.files``.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..atlas.collect import TopChannel, top_channels
from ..util.atomic import atomic_write_text

if TYPE_CHECKING:
    from ..importance.core import Importance

TOP_CHANNELS = 10   # bars per layer

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { margin-bottom: 0.2em; } .muted { color: #777; }
.photo { border-top: 1px solid #ccc; padding: 1em 0; display: flex; flex-wrap: wrap; gap: 24px; }
.photo h2 { flex-basis: 100%; margin: 0; font-size: 1.2em; }
.photo > div { flex: 1 1 360px; } .photo h3 { margin: 0.2em 0; }
figure { margin: 0; width: 448px; max-width: 100%; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
.skipped li { color: #a33; }
svg.bars text { font-size: 10px; font-family: monospace; }
"""


def page(title: str, notes_html: str, body_html: str, css: str = CSS) -> str:
    """A whole HTML page; ``notes_html`` and ``body_html`` are markup already escaped."""
    esc = html.escape(title)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc}</title>'
            f'<style>{css}</style></head><body><h1>{esc}</h1>{notes_html}{body_html}'
            '</body></html>')


def class_label(names: list[str] | None, c: int) -> str:
    """'tabby cat (281)', or 'class 281' without names."""
    return f"{names[c]} ({c})" if names and 0 <= c < len(names) else f"class {c}"


def top_classes_table(top: list[tuple[int, float]], names: list[str] | None, chosen: int,
                      held: set[int]) -> str:
    """Rows 'class, probability'; the explained class in bold, classes not distilled marked."""
    rows = []
    for c, p in top:
        label = html.escape(class_label(names, c))
        if c == chosen:
            label = f"<b>{label}</b>"
        mark = "" if c in held else ' <span class="muted">(not distilled)</span>'
        rows.append(f"<tr><td>{label}{mark}</td><td>{p:.1%}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


@dataclass
class ExplainedPhoto:
    """One overlay of an explain run, as the index shows it."""
    photo: Path                         # the image file explained
    cls: int                            # the class explained
    overlay: str                        # PNG file name, in the run's folder
    raw: str                            # .npy file name of the map on the model's input
    region: tuple[float, float, float, float]   # where that input lies in the photo (pixels)
    size: tuple[int, int]               # the photo's (w, h)
    top: list[tuple[int, float]] = field(default_factory=list)   # model top-5 (class, prob)


def bar_chart_svg(top: list[TopChannel], width: int = 300, bar_h: int = 14) -> str:
    """Inline SVG of horizontal bars, one per channel: its weight (blue positive, red negative)
    and, where the file keeps it, its standard error."""
    if not top:
        return '<p class="muted">no channel has positive importance</p>'
    label_w, gap = 48, 3
    scale = (width - label_w - 92) / max(abs(t.weight) for t in top)
    rows = []
    for i, (ch, v, se) in enumerate(top):
        spread = f" \u00b1 {se:.2g}" if se == se else ""   # NaN: no standard error kept
        y, bar = i * (bar_h + gap), abs(v) * scale
        color = "#2f6fdb" if v >= 0 else "#d9482b"
        rows.append(
            f'<text x="{label_w - 4}" y="{y + bar_h - 3}" text-anchor="end">ch {ch}</text>'
            f'<rect x="{label_w}" y="{y}" width="{bar:.1f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{label_w + bar + 3:.1f}" y="{y + bar_h - 3}">{v:+.3g}{spread}</text>')
    height = len(top) * (bar_h + gap)
    return (f'<svg class="bars" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">{"".join(rows)}</svg>')


def importance_html(importance: Importance, cls: int) -> str:
    """Per layer: how many channels carry positive importance for ``cls`` (those its map is
    made of), the share the top ones hold, and their bars."""
    parts = []
    for layer in importance.layers:
        w = importance.weights[layer][cls].float().clamp(min=0)
        top = top_channels(importance, layer, cls, TOP_CHANNELS)
        share = sum(t.weight for t in top) / float(w.sum()) if float(w.sum()) > 0 else 0.0
        parts.append(f"<div><b>{html.escape(layer)}</b>: {int((w > 0).sum())} of {w.numel()} "
                     f"channels have positive importance; the top {len(top)} hold {share:.0%}"
                     f"<br>{bar_chart_svg(top)}</div>")
    return "".join(parts)


def _section(item: ExplainedPhoto, importance: Importance, method: str) -> str:
    esc = html.escape
    names = importance.class_names
    label = esc(class_label(names, item.cls))
    region = ", ".join(f"{v:.0f}" for v in item.region)
    caption = (f"{esc(method)} for <i>{label}</i> on {item.size[0]}&times;{item.size[1]} px; "
               f"raw map <code>{esc(item.raw)}</code> covers the outlined region ({region})")
    return (f'<div class="photo"><h2>{esc(item.photo.name)}: <i>{label}</i></h2>'
            f'<figure><a href="{esc(item.overlay)}"><img src="{esc(item.overlay)}" '
            f'alt="{label}"></a><figcaption>{caption}</figcaption></figure>'
            f'<div><h3>Model top-5</h3>'
            f'{top_classes_table(item.top, names, item.cls, set(importance.classes))}'
            f'<h3>Channels that carry <i>{label}</i></h3>'
            f'{importance_html(importance, item.cls)}</div></div>')


def write_explain_index(out_dir: Path, items: list[ExplainedPhoto],
                        skipped: list[tuple[Path, str]], importance: Importance, notes: str,
                        method: str) -> Path:
    """Write ``out_dir/index.html`` of an explain run: every overlay with the model's top-5 and
    the class's distilled importance, and the images skipped with the reason."""
    esc = html.escape
    lead = f'<p class="muted">{esc(notes)}</p>'
    if skipped:
        lead += (f'<h3>Skipped ({len(skipped)})</h3><ul class="skipped">'
                 + "".join(f"<li>{esc(str(p))}: {esc(why)}</li>" for p, why in skipped)
                 + "</ul>")
    body = "".join(_section(item, importance, method) for item in items)
    return atomic_write_text(Path(out_dir) / "index.html", page("CHIP explanations", lead, body))
