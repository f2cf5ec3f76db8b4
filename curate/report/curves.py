"""SVG line charts for the report: series over a shared x axis, round-number ticks, a legend, no script.

The SVG is well-formed XML (attributes quoted, text escaped), so it can be inlined into the page and
parsed back by tests. Non-finite values are dropped; long series are thinned to their per-bucket
extremes so a spike in a 100k-tick run still shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

COLOURS = ("#4670be", "#d9523b", "#3a9a5b", "#9a5bb4", "#c28a1d", "#2aa0a8", "#777777")
MAX_POINTS = 2000  # per series; more are thinned to each bucket's first, lowest, highest and last
WIDTH, HEIGHT = 520, 250
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 44, 40  # room for y labels, the title and legend, the x labels


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y), any order; non-finite pairs are skipped


@dataclass
class Best:
    """The point to mark on a chart: a series' lowest (or highest) value."""

    series: str
    x: float
    y: float


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-number ticks (steps of 1, 2 or 5 × 10^k) covering [low, high], about `count` of them."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("ticks need finite bounds")
    if high < low:
        low, high = high, low
    if high == low:  # one value: a span around it of the value's own magnitude
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [_clean(k * step) for k in range(first, last + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as the step needs, thousands separated."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    if step > 0 and abs(round(step * 10**decimals) - step * 10**decimals) > 1e-6:
        decimals += 1  # a step like 0.25 needs one more
    return f"{value:,.{decimals}f}"


def thin(points: Sequence[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most `limit` points in x order: per bucket its first, lowest, highest and last point."""
    if len(points) <= limit:
        return list(points)
    buckets = max(1, limit // 4)
    kept: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[b * len(points) // buckets : (b + 1) * len(points) // buckets]
        if not chunk:
            continue
        picks = {0, len(chunk) - 1, min(range(len(chunk)), key=lambda i: chunk[i][1])}
        picks.add(max(range(len(chunk)), key=lambda i: chunk[i][1]))
        kept += [chunk[i] for i in sorted(picks)]
    return kept


def finite_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The pairs whose x and y are finite numbers, sorted by x (stable, so repeats keep file order)."""
    kept = [(float(x), float(y)) for x, y in points if _finite(x) and _finite(y)]
    return sorted(kept, key=lambda p: p[0])


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    y_label: str,
    x_label: str = "kimg",
    include_zero: bool = False,
    best: str | None = None,
    markers: int = 40,
) -> str:
    """An SVG chart of `series`; `best` ("min" or "max") marks and labels the extreme of the first series.

    Series with fewer than `markers` points also get a dot per point, so one point still shows.
    """
    cleaned = [Series(s.name, thin(finite_points(s.points))) for s in series]
    cleaned = [s for s in cleaned if s.points]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label={quoteattr(title)}>'
        f'<text class="title" x="{LEFT}" y="16" font-size="14" font-weight="bold">{escape(title)}</text>'
    )
    if not cleaned:
        return head + f'<text x="{LEFT}" y="{HEIGHT / 2:.0f}" font-size="12">no finite values</text></svg>'
    xs = [x for s in cleaned for x, _ in s.points]
    ys = [y for s in cleaned for _, y in s.points]
    y_low, y_high = min(ys), max(ys)
    if include_zero:
        y_low, y_high = min(0.0, y_low), max(0.0, y_high)
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(y_low, y_high)
    scale = _Scale(x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1])
    parts = [head, _axes(scale, x_ticks, y_ticks, x_label, y_label), _legend(cleaned)]
    for index, s in enumerate(cleaned):
        colour = COLOURS[index % len(COLOURS)]
        points = " ".join(f"{scale.px(x):.2f},{scale.py(y):.2f}" for x, y in s.points)
        parts.append(
            f'<polyline class="series" data-series={quoteattr(s.name)} points="{points}" fill="none" '
            f'stroke="{colour}" stroke-width="1.6" stroke-linejoin="round"><title>{escape(s.name)}</title>'
            "</polyline>"
        )
        if len(s.points) < markers:
            parts += [
                f'<circle class="dot" cx="{scale.px(x):.2f}" cy="{scale.py(y):.2f}" r="2.5" fill="{colour}">'
                f"<title>{escape(s.name)} {_number(y)} at {_number(x)} {escape(x_label)}</title></circle>"
                for x, y in s.points
            ]
    if best is not None:
        parts.append(_best_mark(find_best(cleaned[0], best), scale, x_label))
    parts.append("</svg>")
    return "".join(parts)


def find_best(series: Series, which: str) -> Best:
    """The lowest (`which="min"`) or highest finite point of a series; the earliest wins ties."""
    points = finite_points(series.points)
    if not points:
        raise ValueError(f"{series.name} has no finite values")
    pick = min if which == "min" else max
    x, y = pick(points, key=lambda p: p[1])
    return Best(series.name, x, y)


@dataclass
class _Scale:
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (x - self.x0) / (self.x1 - self.x0)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * (y - self.y0) / (self.y1 - self.y0)


def _axes(scale: _Scale, x_ticks: list[float], y_ticks: list[float], x_label: str, y_label: str) -> str:
    bottom, top = HEIGHT - BOTTOM, TOP
    parts = [
        f'<rect x="{LEFT}" y="{top}" width="{WIDTH - LEFT - RIGHT}" height="{bottom - top}" fill="none" '
        'stroke="#bbb"/>'
    ]
    x_step, y_step = x_ticks[1] - x_ticks[0], y_ticks[1] - y_ticks[0]
    for tick in x_ticks:
        x = scale.px(tick)
        parts.append(
            f'<g class="xtick"><line x1="{x:.2f}" x2="{x:.2f}" y1="{top}" y2="{bottom + 4}" stroke="#eee"/>'
            f'<text x="{x:.2f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
            f"{tick_label(tick, x_step)}</text></g>"
        )
    for tick in y_ticks:
        y = scale.py(tick)
        parts.append(
            f'<g class="ytick"><line x1="{LEFT - 4}" x2="{WIDTH - RIGHT}" y1="{y:.2f}" y2="{y:.2f}" '
            f'stroke="#eee"/><text x="{LEFT - 6}" y="{y + 4:.2f}" font-size="11" text-anchor="end">'
            f"{tick_label(tick, y_step)}</text></g>"
        )
    middle = (top + bottom) / 2
    parts.append(
        f'<text class="xlabel" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" y="{HEIGHT - 6}" font-size="12" '
        f'text-anchor="middle">{escape(x_label)}</text>'
        f'<text class="ylabel" x="12" y="{middle:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {middle:.0f})">{escape(y_label)}</text>'
    )
    return "".join(parts)


def _legend(series: Sequence[Series]) -> str:
    """One swatch and name per series, in a row under the title."""
    parts, x = ['<g class="legend">'], float(LEFT)
    for index, s in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        parts.append(
            f'<rect x="{x:.0f}" y="25" width="14" height="4" fill="{colour}"/>'
            f'<text x="{x + 18:.0f}" y="31" font-size="11">{escape(s.name)}</text>'
        )
        x += 30 + 6.5 * len(s.name)
    return "".join(parts) + "</g>"


def _best_mark(best: Best, scale: _Scale, x_label: str) -> str:
    x, y = scale.px(best.x), scale.py(best.y)
    text = f"{_number(best.y)} at {_number(best.x)} {x_label}"
    anchor = "end" if x > WIDTH / 2 else "start"
    dx = -8 if anchor == "end" else 8
    return (
        f'<g class="best" data-series={quoteattr(best.series)} data-x="{best.x!r}" data-y="{best.y!r}">'
        f'<circle cx="{x:.2f}" cy="{y:.2f}" r="5" fill="none" stroke="#d33" stroke-width="2"/>'
        f'<text x="{x + dx:.2f}" y="{max(TOP + 12, y - 8):.2f}" font-size="11" fill="#d33" '
        f'text-anchor="{anchor}">{escape(text)}</text></g>'
    )


def _number(value: float) -> str:
    """A value for a label: up to four significant digits, integers as integers."""
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _clean(value: float) -> float:
    """Round off float noise from k × step (0.30000000000000004 → 0.3)."""
    return float(f"{value:.12g}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
