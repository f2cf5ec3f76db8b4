"""`curate report`: a static page of what happened to a workspace (report/index.html), its training
runs included."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from curate.charts import bar_chart
from curate.images import flat_rgb
from curate.progress import StageProgress
from curate.report.facts import gather
from curate.report.page import render
from curate.report.runs import gather_runs
from curate.report.training import copy_run_images, render_training
from curate.workspace import Workspace

THUMB_SIDE = 96
KEPT_SHOWN, DROPPED_SHOWN, GROUPS_SHOWN = 96, 48, 20


@dataclass
class ReportResult:
    page: Path
    thumbnails: int
    runs: int = 0  # training runs shown


def build_report(workspace: str | Path, *, progress: bool = True) -> ReportResult:
    """Write <workspace>/report/index.html, its thumbnails and charts; the folder works when copied."""
    ws = Workspace.open(workspace)
    facts = gather(ws)
    runs = gather_runs(ws.runs)
    shown = set(facts.kept[:KEPT_SHOWN])
    for faces in facts.dropped.values():
        shown.update(faces[:DROPPED_SHOWN])
    for group in facts.duplicates[:GROUPS_SHOWN]:
        shown.update(group)
    folder = ws.root / "report"
    tmp = folder.with_name(f".report.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    (tmp / "thumbs").mkdir(parents=True)
    try:
        thumbs = _thumbnails(ws, facts.crops, sorted(shown), tmp, progress)
        chart = None
        if facts.tags:
            bar_chart(facts.tags, tmp / "tags.png", title="Labels of tagged faces", total=facts.funnel[3][1])
            chart = "tags.png"
        training = render_training(runs, copy_run_images(runs, tmp))
        (tmp / "index.html").write_text(
            render(facts, thumbs, f"curate report: {ws.root.name}", chart, training), "utf-8"
        )
        old = folder.with_name(f".report.{uuid.uuid4().hex[:6]}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportResult(folder / "index.html", len(thumbs), len(runs))


def _thumbnails(
    ws: Workspace, crops: dict[str, str], faces: list[str], out: Path, progress: bool
) -> dict[str, str]:
    """face id → thumbs/<face id>.jpg for every face whose crop opens."""
    from PIL import Image

    made = {}
    with StageProgress("report", total=len(faces), unit="thumbnails", enabled=progress) as bar:
        for face in faces:
            bar.advance(1)
            if face not in crops:
                continue
            try:
                with Image.open(ws.root / crops[face]) as image:
                    image = flat_rgb(image)
                    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                    name = f"thumbs/{face}.jpg"
                    image.save(out / name, quality=85)
            except (OSError, ValueError):
                continue
            made[face] = name
    return made
