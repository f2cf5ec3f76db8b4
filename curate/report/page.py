"""The report page: static HTML with inline SVG charts and thumbnails beside it, no server needed."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from curate.report.facts import Facts
from curate.report.training import STYLE as TRAINING_STYLE

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left}td.n{text-align:right}
.sheet{display:flex;flex-wrap:wrap;gap:4px}.sheet img{width:96px;height:96px;border-radius:3px}
.group{display:flex;gap:4px;margin:6px 0;align-items:center}.group img{width:72px;height:72px}
.group img:first-child{outline:3px solid #3a7}pre{background:#f6f6f6;padding:8px;overflow:auto}
"""
BLUE = "#4670be"
# After load, the page counts images that did not resolve and charts drawn at no size, and writes each
# image's and chart's rendered width on it (tests read them back from the DOM).
CHECK = """
window.addEventListener('load', function () {
  var broken = Array.prototype.filter.call(document.images, function (i) { return !i.naturalWidth; });
  document.body.setAttribute('data-broken-images', String(broken.length));
  Array.prototype.forEach.call(document.images, function (i) {
    i.setAttribute('data-natural-width', String(i.naturalWidth));
  });
  var empty = 0;
  Array.prototype.forEach.call(document.querySelectorAll('svg.curve'), function (s) {
    var box = s.getBoundingClientRect(), lines = s.querySelectorAll('polyline, circle');
    var drawn = Array.prototype.filter.call(lines, function (l) {
      var b = l.getBBox(); return b.width + b.height > 0;
    });
    s.setAttribute('data-rendered', box.width + 'x' + box.height + ':' + drawn.length);
    if (!box.width || !box.height) { empty += 1; }
  });
  document.body.setAttribute('data-empty-charts', String(empty));
});
"""


def render(
    facts: Facts, thumbs: dict[str, str], title: str, tag_chart: str | None, training: str = ""
) -> str:
    """The whole page; `thumbs` maps face ids to thumbnail paths relative to the page, `training` is
    the training section's HTML (curate.report.training)."""
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>",
        f"<style>{STYLE}{TRAINING_STYLE}</style><script>{CHECK}</script></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Funnel</h2>",
        _funnel(facts.funnel),
        "<h2>Outcomes by stage</h2>",
        _outcomes(facts),
        f"<h2>Kept faces ({len(facts.kept):,})</h2>",
        _sheet(facts.kept, thumbs),
    ]
    for reason, faces in sorted(facts.dropped.items()):
        parts += [f"<h2>Dropped: {_e(reason)} ({len(faces):,})</h2>", _sheet(faces, thumbs)]
    if facts.duplicates:
        parts.append(f"<h2>Near-duplicate groups ({len(facts.duplicates):,}; the kept face outlined)</h2>")
        parts += [_sheet(group, thumbs, css="group") for group in facts.duplicates[:20]]
    if facts.scores:
        parts += ["<h2>Filter scores</h2>", _histogram(facts.scores, facts.threshold)]
    if tag_chart:
        parts += ["<h2>Tags</h2>", f'<img src="{_e(tag_chart)}" alt="tag counts">']
    if training:
        parts.append(training)
    parts += ["<h2>Parameters</h2>"]
    parts += [
        f"<h3>{_e(stage)}</h3><pre>{_e(json.dumps(params, indent=1, default=str))}</pre>"
        for stage, params in facts.parameters.items()
    ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _funnel(funnel: Sequence[tuple[str, int]]) -> str:
    top = max((n for _, n in funnel), default=1) or 1
    rows = "".join(
        f"<tr><td>{_e(step)}</td><td class=n>{n:,}</td>"
        f'<td><svg width=400 height=14><rect width="{400 * n / top:.1f}" height=14 fill="{BLUE}"/></svg>'
        "</td></tr>"
        for step, n in funnel
    )
    return f"<table>{rows}</table>"


def _outcomes(facts: Facts) -> str:
    rows = []
    for counts in facts.stages:
        for status, n in counts.by_status.most_common():
            errors = counts.by_error.get(status)
            detail = ", ".join(f"{code} {k:,}" for code, k in errors.most_common()) if errors else ""
            rows.append(
                f"<tr><td>{_e(counts.stage)}</td><td>{_e(status)}</td><td class=n>{n:,}</td>"
                f"<td>{_e(detail)}</td></tr>"
            )
    return (
        "<table><tr><th>stage</th><th>status</th><th>rows</th><th>by reason</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _sheet(faces: Sequence[str], thumbs: dict[str, str], css: str = "sheet") -> str:
    images = "".join(
        f'<img src="{_e(thumbs[face])}" alt="{_e(face)}" title="{_e(face)}" loading=lazy>'
        for face in faces
        if face in thumbs
    )
    more = len([f for f in faces if f not in thumbs])
    note = f"<p>… and {more:,} more</p>" if more else ""
    return f'<div class="{css}">{images}</div>{note}'


def _histogram(scores: Sequence[float], threshold: float | None, bins: int = 40) -> str:
    """An SVG histogram of scores in [0, 1] with the threshold as a red line."""
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, max(0, int(score * bins)))] += 1
    width, height, top = 600, 160, max(counts) or 1
    bar = width / bins
    rects = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - height * c / top:.1f}" width="{bar - 1:.1f}" '
        f'height="{height * c / top:.1f}" fill="{BLUE}">'
        f"<title>{i / bins:.3f}–{(i + 1) / bins:.3f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    line = ""
    if threshold is not None:
        x = width * min(1.0, max(0.0, threshold))
        line = f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#d33" stroke-width="2"/>'
    caption = f"threshold {threshold:.3f}" if threshold is not None else "no threshold"
    return (
        f'<svg width="{width}" height="{height + 16}" role="img" aria-label="filter scores">{rects}{line}'
        f'<text x="0" y="{height + 14}" font-size="12">0</text>'
        f'<text x="{width - 8}" y="{height + 14}" font-size="12">1</text></svg><p>{_e(caption)}, '
        f"{len(scores):,} faces</p>"
    )
