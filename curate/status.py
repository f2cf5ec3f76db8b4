"""Per-stage counts of a workspace's manifests: rows by status and error code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curate.manifest import ERROR, STAGES, STATUS, STATUSES, TAG_CATEGORIES, Stage, read_stage
from curate.workspace import Workspace


@dataclass
class StageCounts:
    """How many rows a stage holds, by status and, within each status, by error code."""

    stage: str
    rows: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_error: dict[str, Counter[str]] = field(default_factory=dict)


def count_outcomes(ws: Workspace, stage: Stage) -> StageCounts:
    """Count a stage's newest rows by status and error code (tag categories count by category)."""
    group = STATUS if STATUS in stage.columns else "category"
    keys = [c for c in (group, ERROR) if c in stage.columns]
    table = read_stage(ws, stage, columns=keys)
    counts = StageCounts(stage.name, rows=table.num_rows)
    # Grouped in Arrow: a manifest of millions of rows is never turned into Python objects.
    for row in table.group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist():
        value, error, n = row[group], row.get(ERROR), row["count_all"]
        counts.by_status[value] += n
        if error:
            counts.by_error.setdefault(value, Counter())[error] += n
    return counts


def workspace_status(ws: Workspace) -> list[StageCounts]:
    """Counts for every stage that has written anything, in pipeline order."""
    present = {p.name for p in ws.manifests.iterdir()} if ws.manifests.is_dir() else set()
    return [count_outcomes(ws, stage) for name, stage in STAGES.items() if name in present]


def format_counts(counts: StageCounts) -> list[str]:
    """Plain lines for one stage, e.g. `failed   12  (http_404 9, decode_error 3)`."""
    order = list(STATUSES) if counts.stage != TAG_CATEGORIES.name else sorted(counts.by_status)
    lines = []
    for status in order:
        n = counts.by_status.get(status, 0)
        if not n:
            continue
        detail = counts.by_error.get(status)
        codes = ", ".join(f"{code} {k}" for code, k in detail.most_common()) if detail else ""
        lines.append(f"{status:<10}{n:>8}" + (f"  ({codes})" if codes else ""))
    return lines


def run_lines(ws: Workspace) -> list[str]:
    """A line per training run under WORKSPACE/runs: its newest snapshot's kimg, of how many asked."""
    from train.runs import list_runs

    lines = []
    for run in list_runs(ws.runs):
        target = f" of {run.target_kimg:g}" if run.target_kimg is not None else ""
        lines.append(f"{run.name}  kimg {run.kimg:g}{target}, {run.snapshots} snapshots")
    return lines
