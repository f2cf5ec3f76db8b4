"""The review page's face table: crop, tag, filter, crawl and review manifests joined per face, cached.

The table is rebuilt only when a manifest's list of parts changes (parts are written once and renamed
into place, so a new name is the only way a manifest changes). Decisions are cached apart from the rest:
a decision adds a review part every time, and the other four manifests need not be read again for it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import review
from curate.errors import InvalidArgument
from curate.manifest import (
    CRAWL,
    CROP,
    FILTER,
    OK,
    REVIEW,
    STATUS,
    TAG,
    part_files,
    part_metadata,
    read_stage,
)
from curate.tagnames import canonical_tag
from curate.workspace import Workspace

SORTS = ("unsure", "score", "query", "reason", "group")
REASONS = ("kept", "low_score", "duplicate", "bad_seed", "unfiltered")
_CROP_COLUMNS = [
    "image_id", STATUS, "path", "source_path", "crop_x0", "crop_y0", "crop_x1", "crop_y1", "face_x0",
    "face_y0", "face_x1", "face_y1", "image_width", "image_height", "score", "detector",
]  # fmt: skip
_FILTER_COLUMNS = [
    "error", "message", "score", "seed", "mined", "nearest_seeds", "dup_group", "dup_of", "keep",
]  # fmt: skip


class UnknownFace(InvalidArgument):
    """A face id of the right shape that no crop row holds."""

    status = 404


@dataclass
class Face:
    face_id: str
    image_id: str
    crop: dict[str, Any]  # the crop row (path, boxes, original)
    labels: list[str] = field(default_factory=list)
    filter: dict[str, Any] | None = None  # the filter row; None: not filtered yet
    posts: list[tuple[str, str | None]] = field(default_factory=list)  # (post_id, url) of the original

    @property
    def score(self) -> float | None:
        value = self.filter["score"] if self.filter else None
        return None if value is None or math.isnan(value) else float(value)

    @property
    def reason(self) -> str:
        if self.filter is None:
            return "unfiltered"
        return self.filter["error"] or "kept"


@dataclass
class Table:
    faces: dict[str, Face]  # in crop manifest order
    threshold: float | None
    estimated_precision: float | None
    filtered_at: str | None


class FaceTable:
    """The workspace's faces, rebuilt when a manifest gains or loses a part; safe across threads."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._table: Table | None = None
        self._review_parts: dict[str, list[tuple[str, str | None]]] = {}  # part name → its rows
        self._review_key: tuple | None = None
        self._decisions: dict[str, str] = {}

    def table(self) -> Table:
        key = tuple(tuple(p.name for p in part_files(self.ws, s)) for s in (CROP, TAG, FILTER, CRAWL))
        with self._lock:
            if key != self._key or self._table is None:
                self._table, self._key = _build(self.ws), key
            return self._table

    def decisions(self) -> dict[str, str]:
        """As `review.decisions`, reading only the review parts that are new since the last call."""
        for attempt in range(3):
            try:
                return self._read_decisions()
            except FileNotFoundError:  # a compaction removed a part between listing and reading it
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _read_decisions(self) -> dict[str, str]:
        parts = part_files(self.ws, REVIEW)
        key = tuple(p.name for p in parts)
        with self._lock:
            if key != self._review_key:
                known = {p.name: self._review_parts.get(p.name) for p in parts}
                for part in parts:
                    if known[part.name] is None:
                        table = pq.read_table(part, columns=["face_id", "decision"])
                        rows = zip(table["face_id"].to_pylist(), table["decision"].to_pylist(), strict=True)
                        known[part.name] = list(rows)
                standing: dict[str, str | None] = {}
                for name in key:  # parts in writing order, rows in order: the newest row per face wins
                    standing.update(known[name])
                self._review_parts, self._review_key = known, key
                self._decisions = {face: d for face, d in standing.items() if d is not None}
            return self._decisions

    def face(self, face_id: str) -> Face:
        """The face by id: InvalidArgument (400) for an id of the wrong shape, UnknownFace (404) else."""
        review.check_face_id(face_id)
        found = self.table().faces.get(face_id)
        if found is None:
            raise UnknownFace(f"no face {face_id} in this workspace")
        return found

    def file(self, relative: str | None) -> Path | None:
        """A path the manifest records, as a file inside the workspace; None when missing or outside."""
        if not relative:
            return None
        root = self.ws.root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def listing(
        self, *, sort: str, query: str = "", reason: str | None = None, todo: bool = False
    ) -> list[Face]:
        """Faces in the order asked, narrowed to a tag query, a reason, or the undecided non-seeds."""
        table = self.table()
        faces: Iterable[Face] = table.faces.values()
        wanted = tags_of(query)
        if sort == "query" and not wanted:
            raise InvalidArgument("sort=query needs a tag query (q)")
        if wanted:
            faces = [f for f in faces if wanted <= set(f.labels)]
        if reason is not None:
            faces = [f for f in faces if f.reason == reason]
        if todo:
            decided = self.decisions()
            faces = [f for f in faces if f.face_id not in decided and not (f.filter and f.filter["seed"])]
        return order(list(faces), sort, table.threshold)

    def counts(self) -> dict[str, Any]:
        """What the counts panel shows: the filter's outcome, its threshold and seed precision, decisions."""
        table = self.table()
        reasons = Counter(f.reason for f in table.faces.values())
        seeds = Counter(f.filter["seed"] for f in table.faces.values() if f.filter and f.filter["seed"])
        decided = Counter(self.decisions().values())
        return {
            "faces": len(table.faces),
            "kept": reasons["kept"],
            "dropped": reasons["low_score"] + reasons["bad_seed"],
            "duplicates": reasons["duplicate"],
            "unfiltered": reasons["unfiltered"],
            "reasons": {name: reasons[name] for name in REASONS},
            "threshold": table.threshold,
            "estimated_precision": table.estimated_precision,
            "filtered_at": table.filtered_at,
            "seeds": {"good": seeds["good"], "bad": seeds["bad"]},
            "decisions": {name: decided[name] for name in ("good", "bad", "skip")},
        }


def tags_of(query: str) -> set[str]:
    return {canonical_tag(t) for t in query.replace(",", " ").split()}


def order(faces: list[Face], sort: str, threshold: float | None) -> list[Face]:
    """Faces sorted: unsure (nearest the threshold first), score (highest first), reason, group."""
    if sort in ("unsure", "query"):
        by_id = {f.face_id: f for f in faces}
        return [by_id[i] for i in review.uncertainty_order({f.face_id: f.score for f in faces}, threshold)]
    key: Callable[[Face], tuple]
    if sort == "score":
        key = lambda f: (f.score is None, -(f.score or 0.0), f.face_id)  # noqa: E731
    elif sort == "reason":
        key = lambda f: (REASONS.index(f.reason), -(f.score or 0.0), f.face_id)  # noqa: E731
    elif sort == "group":
        # members of a duplicate group together, the keeper first; faces in no group after them
        def key(f: Face) -> tuple:
            group = f.filter["dup_group"] if f.filter else None
            return (group is None, group or "", f.reason != "kept", f.face_id)
    else:
        raise InvalidArgument(f"sort is one of {', '.join(SORTS)}, not {sort!r}")
    return sorted(faces, key=key)


def _build(ws: Workspace) -> Table:
    crops = read_stage(ws, CROP, columns=_CROP_COLUMNS)
    crops = crops.filter(pc.and_(pc.equal(crops[STATUS], OK), pc.is_valid(crops["path"])))
    faces = {
        row["face_id"]: Face(row["face_id"], row["image_id"], row) for row in crops.to_pylist()
    }  # fmt: skip
    tags = read_stage(ws, TAG, columns=[STATUS, "labels"])
    for face, status, labels in zip(
        *(tags[c].to_pylist() for c in ("face_id", STATUS, "labels")), strict=True
    ):
        if face in faces and status == OK:
            faces[face].labels = list(labels or ())
    for row in read_stage(ws, FILTER, columns=_FILTER_COLUMNS).to_pylist():
        if row["face_id"] in faces:
            faces[row["face_id"]].filter = row
    posts: dict[str, list[tuple[str, str | None]]] = {}
    crawl = read_stage(ws, CRAWL, columns=[STATUS, "image_id", "url"])
    for post, status, image, url in zip(
        *(crawl[c].to_pylist() for c in ("post_id", STATUS, "image_id", "url")), strict=True
    ):
        if status == OK and image:
            posts.setdefault(image, []).append((post, url))
    for face in faces.values():
        face.posts = posts.get(face.image_id, [])
    threshold = precision = written = None
    parts = part_files(ws, FILTER)
    if parts:
        meta = part_metadata(parts[-1])
        threshold = _number(meta["params"].get("threshold"))
        precision = _number(meta["params"].get("estimated_precision"))
        written = meta["written_at"]
    return Table(faces, threshold, precision, written)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def summary(face: Face, decision: str | None) -> dict[str, Any]:
    """What a grid cell shows of a face."""
    row = face.filter or {}
    post_id, url = face.posts[0] if face.posts else (None, None)
    return {
        "face_id": face.face_id,
        "image_id": face.image_id,
        "score": face.score,
        "reason": face.reason,
        "keep": row.get("keep"),
        "seed": row.get("seed"),
        "mined": row.get("mined"),
        "dup_group": row.get("dup_group"),
        "dup_of": row.get("dup_of"),
        "labels": face.labels[:12],
        "decision": decision,
        "post_id": post_id,
        "post_url": url if url and url.startswith(("http://", "https://")) else None,
        "crop": f"/api/faces/{face.face_id}/crop.png",
        "context": f"/api/faces/{face.face_id}/context.jpg" if face.crop.get("source_path") else None,
    }


def details(face: Face, decision: str | None, history: list[str]) -> dict[str, Any]:
    """Everything the page can show of one face."""
    crop = face.crop
    return {
        **summary(face, decision),
        "labels": face.labels,
        "message": (face.filter or {}).get("message"),
        "nearest_seeds": (face.filter or {}).get("nearest_seeds") or [],
        "history": history,
        "posts": [
            {"post_id": post, "url": url if url and url.startswith(("http://", "https://")) else None}
            for post, url in face.posts
        ],
        "detector": crop.get("detector"),
        "detector_score": crop.get("score"),
        "crop_box": [crop.get(f"crop_{c}") for c in ("x0", "y0", "x1", "y1")],
        "face_box": [crop.get(f"face_{c}") for c in ("x0", "y0", "x1", "y1")],
        "image_size": [crop.get("image_width"), crop.get("image_height")],
    }
