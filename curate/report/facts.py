"""What the report shows, read from the manifests: the funnel, faces by outcome, duplicates, tags."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.compute as pc

from curate.manifest import (
    CRAWL,
    CROP,
    FILTER,
    OK,
    STAGES,
    STATUS,
    TAG,
    part_files,
    part_metadata,
    read_stage,
)
from curate.status import StageCounts, workspace_status
from curate.workspace import Workspace


@dataclass
class Facts:
    funnel: list[tuple[str, int]]  # (step, count), posts → exported
    stages: list[StageCounts]  # rows by status and error, per stage
    crops: dict[str, str]  # face id → crop path (relative to the workspace)
    kept: list[str]  # face ids the filter kept (every face when no filter ran)
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason → face ids
    duplicates: list[list[str]] = field(default_factory=list)  # groups, keeper first
    tags: list[tuple[str, int]] = field(default_factory=list)  # the most common labels
    scores: list[float] = field(default_factory=list)  # the filter's score of every non-seed face
    threshold: float | None = None
    parameters: dict[str, dict] = field(default_factory=dict)  # stage → its newest part's parameters


def gather(ws: Workspace, *, top_tags: int = 30) -> Facts:
    """Everything the page needs, from the manifests alone."""
    stages = workspace_status(ws)
    by_stage = {counts.stage: counts for counts in stages}
    crops = _ok_rows(ws, CROP, "path")
    filter_rows = read_stage(ws, FILTER, columns=["keep", "error", "dup_group", "score", "seed"]).to_pylist()
    # every cropped face counts as kept when no filter ran
    kept = [r["face_id"] for r in filter_rows if r["keep"]] if filter_rows else sorted(crops)
    dropped: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for row in filter_rows:
        if row["error"]:
            dropped.setdefault(row["error"], []).append(row["face_id"])
        if row["dup_group"]:
            groups.setdefault(row["dup_group"], []).append(row["face_id"])
    duplicates = [sorted(m, key=lambda f, k=keeper: f != k) for keeper, m in groups.items() if len(m) > 1]
    tagged = read_stage(ws, TAG, columns=[STATUS, "labels"])
    labels = Counter()
    if tagged.num_rows:
        for row in tagged.filter(pc.equal(tagged[STATUS], OK))["labels"].to_pylist():
            labels.update(row or ())
    exported = _exported(ws)
    funnel = [
        ("posts", by_stage[CRAWL.name].rows if CRAWL.name in by_stage else 0),
        ("images", by_stage[CRAWL.name].by_status.get(OK, 0) if CRAWL.name in by_stage else 0),
        ("faces", len(crops)),
        ("tagged", by_stage[TAG.name].by_status.get(OK, 0) if TAG.name in by_stage else 0),
        ("kept", len(kept)),
        ("exported", exported),
    ]
    parameters = {}
    for name, stage in STAGES.items():
        parts = part_files(ws, stage)
        if parts:
            parameters[name] = part_metadata(parts[-1]).get("params", {})
    threshold = parameters.get(FILTER.name, {}).get("threshold")
    return Facts(
        funnel=funnel,
        stages=stages,
        crops=crops,
        kept=kept,
        dropped=dropped,
        duplicates=duplicates,
        tags=labels.most_common(top_tags),
        scores=[r["score"] for r in filter_rows if r["score"] is not None and not r["seed"]],
        threshold=threshold,
        parameters=parameters,
    )


def _ok_rows(ws: Workspace, stage, column: str) -> dict[str, str]:
    table = read_stage(ws, stage, columns=[STATUS, column])
    if not table.num_rows:
        return {}
    table = table.filter(pc.and_(pc.equal(table[STATUS], OK), pc.is_valid(table[column])))
    return dict(zip(table[stage.key].to_pylist(), table[column].to_pylist(), strict=True))


def _exported(ws: Workspace) -> int:
    """Faces in the largest export under <workspace>/export (its export.json counts)."""
    best = 0
    for record in ws.export.glob("*/export.json"):
        try:
            best = max(best, sum(json.loads(record.read_text(encoding="utf-8"))["counts"].values()))
        except (OSError, ValueError, KeyError):
            continue
    return best
