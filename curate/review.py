"""People's good/bad/skip decisions on faces: the `review` manifest, and the order faces are shown in.

Every decision is one part of its own, on disk (fsynced and renamed) before `decide` returns, so an
answered decision survives a kill at any moment. Undo writes a row too: it takes back the face's newest
decision not yet taken back, and its `decision` column holds what is left, so a reader that takes the
newest row per face (as every manifest reader does) sees the current decision. Parts are compacted into
one when they pile up; rows carry a unique id so a compaction cut short by a kill never doubles one.
"""

from __future__ import annotations

import math
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import InvalidArgument
from curate.manifest import (
    FILTER,
    OK,
    REVIEW,
    REVIEW_DECISIONS,
    STATUS,
    now_utc,
    part_files,
    part_metadata,
    read_stage,
    write_part,
)
from curate.workspace import Workspace

# A face id as the crop stage makes them: an md5 image id, a dash, the face's index; bad crops of the
# fixture mix and local ingest use short word ids, so letters, digits, '_' and '-' only, no dots or slashes.
FACE_ID = re.compile(r"[A-Za-z0-9_]{1,64}-[0-9]{1,4}")
COMPACT_AFTER = 256  # parts; reading thousands of one-row parts would slow every reader
_write_lock = threading.Lock()


def check_face_id(face_id: str) -> str:
    """The id unchanged when it has the shape of a face id; InvalidArgument otherwise."""
    if not isinstance(face_id, str) or not FACE_ID.fullmatch(face_id):
        raise InvalidArgument(f"not a face id: {str(face_id)[:80]!r}")
    return face_id


@dataclass(frozen=True)
class Decision:
    face_id: str
    decision: str | None  # good | bad | skip, or None: no decision stands
    undo: bool
    reviewed_at: Any
    decision_id: str  # the row's unique id in the review manifest


def decisions(ws: Workspace) -> dict[str, str]:
    """Each reviewed face's standing decision (faces whose decisions were all undone are left out)."""
    table = read_stage(ws, REVIEW, columns=["decision"])
    table = table.filter(pc.is_valid(table["decision"]))
    return dict(zip(table["face_id"].to_pylist(), table["decision"].to_pylist(), strict=True))


def review_seeds(ws: Workspace) -> tuple[list[str], list[str]]:
    """(good, bad) face ids as people decided them, in face id order; skips are neither."""
    standing = decisions(ws)
    good = sorted(f for f, d in standing.items() if d == "good")
    bad = sorted(f for f, d in standing.items() if d == "bad")
    return good, bad


def history(ws: Workspace, face_id: str) -> list[str]:
    """The face's decisions not taken back, oldest first (undo pops the last)."""
    stack: list[str] = []
    for row in _rows_in_order(ws, face_id):
        if row["undo"]:
            if stack:
                stack.pop()
        elif row["decision"] is not None:
            stack.append(row["decision"])
    return stack


def decide(
    ws: Workspace, face_id: str, image_id: str, decision: str, *, reviewer: str | None = None
) -> Decision:
    """Record a decision durably (its own part, fsynced) and return it."""
    check_face_id(face_id)
    if decision not in REVIEW_DECISIONS:
        raise InvalidArgument(f"a decision is one of {', '.join(REVIEW_DECISIONS)}, not {decision!r}")
    with _write_lock:
        return _write(ws, face_id, image_id, decision, undo=False, reviewer=reviewer)


def undo(ws: Workspace, face_id: str, image_id: str, *, reviewer: str | None = None) -> Decision:
    """Take back the face's newest standing decision; the row written holds the one before it (or None)."""
    check_face_id(face_id)
    with _write_lock:
        stack = history(ws, face_id)
        if not stack:
            raise InvalidArgument(f"face {face_id} has no decision to undo")
        left = stack[-2] if len(stack) > 1 else None
        return _write(ws, face_id, image_id, left, undo=True, reviewer=reviewer)


def _write(
    ws: Workspace, face_id: str, image_id: str, decision: str | None, *, undo: bool, reviewer: str | None
) -> Decision:
    at, decision_id = now_utc(), uuid.uuid4().hex
    row = {
        "face_id": face_id, "image_id": image_id, STATUS: OK, "error": None, "message": None,
        "decision": decision, "undo": undo, "decision_id": decision_id, "reviewer": reviewer,
        "reviewed_at": at,
    }  # fmt: skip
    write_part(ws, REVIEW, [row], {"reviewer": reviewer})
    if len(part_files(ws, REVIEW)) > COMPACT_AFTER:
        compact(ws)
    return Decision(face_id, decision, undo, at, decision_id)


def compact(ws: Workspace) -> None:
    """Merge every review part into one: the merged part is whole on disk before any old part goes."""
    parts = part_files(ws, REVIEW)
    if len(parts) < 2:
        return
    rows = _dedup(row for part in parts for row in pq.read_table(part).to_pylist())
    write_part(ws, REVIEW, rows, {"compacted": len(parts)})
    for part in parts:
        part.unlink(missing_ok=True)


def _dedup(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["decision_id"] not in seen:
            seen.add(row["decision_id"])
            kept.append(row)
    return kept


def _rows_in_order(ws: Workspace, face_id: str) -> list[dict[str, Any]]:
    columns = ["face_id", "decision", "undo", "decision_id"]
    rows = []
    for part in part_files(ws, REVIEW):
        table = pq.read_table(part, columns=columns)
        rows.extend(table.filter(pc.equal(table["face_id"], face_id)).to_pylist())
    return _dedup(rows)


def uncertainty_order(scores: dict[str, float | None], threshold: float | None) -> list[str]:
    """Faces by how unsure the filter is: the nearest to its threshold first, unscored faces last."""
    cut = 0.5 if threshold is None or math.isnan(threshold) else threshold

    def distance(face: str) -> tuple[float, str]:
        score = scores[face]
        return (math.inf if score is None or math.isnan(score) else abs(score - cut), face)

    return sorted(scores, key=distance)


def review_queue(ws: Workspace, count: int) -> list[str]:
    """The `count` faces the review page shows first: undecided, not seeds, nearest the threshold."""
    table = read_stage(ws, FILTER, columns=["score", "seed"])
    if table.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no filter manifest: run `curate filter` first")
    parts = part_files(ws, FILTER)
    threshold = part_metadata(parts[-1])["params"].get("threshold")
    decided = set(decisions(ws))
    scores = {
        face: score
        for face, score, seed in zip(
            *(table[c].to_pylist() for c in ("face_id", "score", "seed")), strict=True
        )
        if seed is None and face not in decided
    }
    return uncertainty_order(scores, threshold)[:count]
