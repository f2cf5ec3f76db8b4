"""What the report shows of each training run, read from its JSON and PNG files (never torch).

`metrics.jsonl` holds a line per tick and, from `curate metrics`, lines without a tick; metric values
(`fid50k_full`, `kid50k_full`, `pr50k3_full_precision`, …) may be in either kind. A killed run can
leave a truncated last line: such lines are counted and skipped, never fatal.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.runs import METRICS_FILE, OPTIONS_FILE
from train.snapshot import list_snapshots, snapshot_nimg

METRIC_KEY = re.compile(r"^(fid|kid|pr)\d")
# the per-tick values charted, by chart: (title, y label, keys, starts at zero)
TICK_CHARTS = (
    ("Losses", "loss", ("loss_G", "loss_D"), False),
    ("Discriminator scores", "D output", ("score_real", "score_fake"), False),
    ("Augmentation probability", "p", ("augment_p",), True),
    ("Regularisers", "value", ("r1", "pl_length"), True),
    ("Speed", "s / kimg", ("sec_per_kimg",), True),
)
_GRID = re.compile(r"^fakes-(\d{6})(?:\.(\d{3}))?\.png$")


@dataclass
class MetricsLog:
    """metrics.jsonl read back: tick records, metric values by name, and how many lines were unreadable."""

    ticks: list[dict[str, Any]] = field(default_factory=list)
    measured: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # name → (kimg, value)
    skipped: int = 0

    def series(self, key: str) -> list[tuple[float, float]]:
        """(kimg, value) of a per-tick key, from the ticks that hold a number for it."""
        return [(t["kimg"], t[key]) for t in self.ticks if _number(t.get(key))]


@dataclass
class RunFacts:
    name: str
    path: Path
    started: bool  # metrics.jsonl exists
    log: MetricsLog
    kimg: float | None  # the newest tick's (or snapshot's) kimg
    target_kimg: float | None
    label_names: list[str]
    labels: int  # how many labels the run is conditioned on (0: unconditional)
    snapshot: str | None  # the newest snapshot's file name
    grid: Path | None  # the newest fakes grid
    grid_rows: list[list[str]]  # label names of each of its rows
    reals: Path | None
    options: dict[str, Any]


def read_metrics(path: Path) -> MetricsLog:
    """Parse a metrics.jsonl; lines that are not JSON objects with a numeric kimg (or nimg) are skipped."""
    log = MetricsLog()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return log
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.skipped += 1
            continue
        kimg = _kimg(record)
        if kimg is None:
            log.skipped += 1
            continue
        if "tick" in record:
            log.ticks.append({**record, "kimg": kimg})
        for key, value in record.items():
            if METRIC_KEY.match(key) and _number(value):
                log.measured.setdefault(key, []).append((kimg, float(value)))
    log.ticks.sort(key=lambda t: t["kimg"])
    for values in log.measured.values():
        values.sort(key=lambda p: p[0])
    return log


def gather_runs(runs_root: Path) -> list[RunFacts]:
    """Every run folder (one holding options.json) under `runs_root`, by name."""
    if not runs_root.is_dir():
        return []
    folders = sorted(p for p in runs_root.iterdir() if p.is_dir() and (p / OPTIONS_FILE).is_file())
    return [run_facts(folder) for folder in folders]


def run_facts(run: Path) -> RunFacts:
    record = _read_json(run / OPTIONS_FILE)
    options = record.get("options") if isinstance(record.get("options"), dict) else {}
    metrics = run / METRICS_FILE
    log = read_metrics(metrics)
    snapshots = list_snapshots(run)
    kimg = log.ticks[-1]["kimg"] if log.ticks else None
    if kimg is None and snapshots:
        kimg = (snapshot_nimg(snapshots[-1]) or 0) / 1000
    grid = latest_grid(run)
    rows = _read_json(grid.with_suffix(".json")).get("rows") if grid else None
    rows = rows if isinstance(rows, list) else None
    labels = record.get("label_names")
    target = options.get("kimg")
    return RunFacts(
        name=run.name,
        path=run,
        started=metrics.is_file(),
        log=log,
        kimg=kimg,
        target_kimg=float(target) if _number(target) else None,
        label_names=[str(n) for n in labels] if isinstance(labels, list) else [],
        labels=len(labels) if isinstance(labels, list) and labels else _c_dim(record),
        snapshot=snapshots[-1].name if snapshots else None,
        grid=grid,
        grid_rows=[[str(n) for n in row] for row in rows if isinstance(row, list)] if rows else [],
        reals=run / "reals.png" if (run / "reals.png").is_file() else None,
        options=options,
    )


def latest_grid(run: Path) -> Path | None:
    """The fakes grid of the most images (`fakes-000200.png`), else `fakes-init.png`, else None."""
    found = []
    for path in run.iterdir():
        match = _GRID.match(path.name)
        if match:
            found.append((int(match.group(1)) * 1000 + int(match.group(2) or 0), path))
    if found:
        return max(found)[1]
    init = run / "fakes-init.png"
    return init if init.is_file() else None


def lower_is_better(metric: str) -> bool:
    """FID and KID fall as samples improve; precision and recall rise."""
    return not metric.startswith("pr")


def _kimg(record: object) -> float | None:
    if not isinstance(record, dict):
        return None
    if _number(record.get("kimg")):
        return float(record["kimg"])
    if _number(record.get("nimg")):
        return float(record["nimg"]) / 1000
    return None


def _c_dim(record: dict[str, Any]) -> int:
    network = record.get("network")
    c_dim = network.get("c_dim") if isinstance(network, dict) else None
    return int(c_dim) if _number(c_dim) else 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
