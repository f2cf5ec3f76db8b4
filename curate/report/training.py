"""The report's training section: per run its progress, curves (inline SVG), metrics and newest grids."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from curate.report.curves import Series, find_best, line_chart
from curate.report.runs import TICK_CHARTS, RunFacts, lower_is_better

COPY_BYTES = 8 * 2**20  # larger grids are shown as a JPEG of at most GRID_SIDE pixels a side
GRID_SIDE = 2048
STYLE = """
.run{margin:1em 0 2.5em}.charts{display:flex;flex-wrap:wrap;gap:8px}.curve{border:1px solid #eee}
.grids{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.grids figure{margin:0}
.grids img{max-width:100%;image-rendering:pixelated}.note{color:#a33}
"""


@dataclass
class RunImages:
    """A run's grids as copied into the report folder, as paths relative to the page."""

    grid: str | None = None
    reals: str | None = None


def copy_run_images(runs: list[RunFacts], out: Path) -> dict[str, RunImages]:
    """Copy each run's newest grid and reals.png to `out`/runs/<name>/, so the report folder travels alone."""
    copied = {}
    for run in runs:
        images = RunImages()
        for attr in ("grid", "reals"):
            source = getattr(run, attr)
            if source is None:
                continue
            name = _copy_image(source, out / "runs" / run.name)
            if name is not None:
                setattr(images, attr, f"runs/{quote(run.name)}/{quote(name)}")
        copied[run.name] = images
    return copied


def render_training(runs: list[RunFacts], images: dict[str, RunImages]) -> str:
    """The section's HTML; empty when there are no runs."""
    if not runs:
        return ""
    parts = [f"<h2>Training ({len(runs)} run{'s' if len(runs) != 1 else ''})</h2>"]
    parts += [_run(run, images.get(run.name, RunImages())) for run in runs]
    return "\n".join(parts)


def _run(run: RunFacts, images: RunImages) -> str:
    parts = [f'<section class="run" data-run="{_e(run.name)}"><h3>{_e(run.name)}</h3>', _summary(run)]
    if not run.started:
        parts.append("<p>not started: no metrics.jsonl yet</p>")
    if run.log.skipped:
        parts.append(
            f'<p class="note">{run.log.skipped:,} unreadable line{"s" if run.log.skipped != 1 else ""} '
            "in metrics.jsonl skipped (a truncated or malformed record)</p>"
        )
    charts = _tick_charts(run) + _metric_charts(run)
    if charts:
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    parts += _best_lines(run)
    parts.append(_grids(run, images))
    parts.append("</section>")
    return "\n".join(parts)


def _summary(run: RunFacts) -> str:
    target = f" of {run.target_kimg:,g}" if run.target_kimg is not None else ""
    rows = [
        ("kimg", f"{run.kimg if run.kimg is not None else 0:,g}{target}"),
        ("ticks", f"{len(run.log.ticks):,}"),
        ("labels", f"{run.labels:,}" if run.labels else "none (unconditional)"),
        ("newest snapshot", run.snapshot or "none yet"),
    ]
    for key in ("cfg", "aug", "batch", "gamma"):
        if run.options.get(key) is not None:
            rows.append((key, str(run.options[key])))
    if run.log.ticks and "augment_p" in run.log.ticks[-1]:
        rows.append(("augment p", f"{run.log.ticks[-1]['augment_p']:.3f}"))
    cells = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="run-summary">{cells}</table>'


def _tick_charts(run: RunFacts) -> list[str]:
    charts = []
    for title, y_label, keys, zero in TICK_CHARTS:
        series = [Series(key, run.log.series(key)) for key in keys]
        series = [s for s in series if s.points]
        if series:
            charts.append(line_chart(series, title=title, y_label=y_label, include_zero=zero))
    return charts


def _metric_charts(run: RunFacts) -> list[str]:
    """One chart per measured metric, its best value marked."""
    return [
        line_chart(
            [Series(name, values)],
            title=name,
            y_label=_metric_unit(name),
            best="min" if lower_is_better(name) else "max",
        )
        for name, values in sorted(run.log.measured.items())
    ]


def _metric_unit(name: str) -> str:
    """`fid50k_full` → FID, `pr50k3_full_recall` → recall."""
    family = name.split("_")[0].rstrip("0123456789k")
    return name.rsplit("_", 1)[-1] if family == "pr" else family.upper() or name


def _best_lines(run: RunFacts) -> list[str]:
    lines = []
    for name, values in sorted(run.log.measured.items()):
        which = "min" if lower_is_better(name) else "max"
        best = find_best(Series(name, values), which)
        word = "lowest" if which == "min" else "highest"
        lines.append(
            f'<li class="best-metric" data-metric="{_e(name)}">{word} {_e(name)}: <b>{best.y:.4g}</b> at '
            f"kimg {best.x:,g} ({len(values)} measured)</li>"
        )
    return [f"<ul>{''.join(lines)}</ul>"] if lines else []


def _grids(run: RunFacts, images: RunImages) -> str:
    figures = []
    if images.grid and run.grid is not None:
        caption = f"{run.grid.name}: generated"
        rows = "".join(f"<li>{_e(', '.join(names) or '(no labels)')}</li>" for names in run.grid_rows)
        listing = f'<ol class="grid-rows">{rows}</ol>' if rows else ""
        figures.append(
            f'<figure><img class="fakes" src="{_e(images.grid)}" alt="{_e(run.grid.name)}">'
            f"<figcaption>{_e(caption)}{', rows by label:' if rows else ''}</figcaption>{listing}</figure>"
        )
    if images.reals:
        figures.append(
            f'<figure><img class="reals" src="{_e(images.reals)}" alt="reals">'
            "<figcaption>reals.png: training images</figcaption></figure>"
        )
    return f'<div class="grids">{"".join(figures)}</div>' if figures else ""


def _copy_image(source: Path, folder: Path) -> str | None:
    """Copy `source` into `folder` (a large PNG as a smaller JPEG); its new file name, or None."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if source.stat().st_size <= COPY_BYTES:
            shutil.copyfile(source, folder / source.name)
            return source.name
        from PIL import Image

        from curate.images import flat_rgb

        with Image.open(source) as image:
            image = flat_rgb(image)
            image.thumbnail((GRID_SIDE, GRID_SIDE))
            name = f"{source.stem}.jpg"
            image.save(folder / name, quality=90)
            return name
    except (OSError, ValueError):
        return None


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
