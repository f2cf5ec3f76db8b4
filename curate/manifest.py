"""Stage manifests: Arrow schemas, atomic Parquet parts, and reading a stage back (latest row per id wins).

A manifest is a folder of Parquet parts. Each part is written under a hidden temporary name and renamed,
so a kill at any moment leaves only whole parts; readers skip hidden names. Parts sort by name in the
order they were written, and when an id appears in several parts (a retry, `--force`) the newest row
is the one that counts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import InvalidArgument
from curate.workspace import Workspace

OK, SKIPPED, FAILED = "ok", "skipped", "failed"
STATUSES = (OK, SKIPPED, FAILED)

# Column names every per-sample stage shares.
STATUS, ERROR, MESSAGE = "status", "error", "message"

TAG_CATEGORY_NAMES = ("artist", "character", "copyright", "general", "metadata")

_META_PREFIX = "curate."
_TAG_LIST = pa.list_(pa.string())


@dataclass(frozen=True)
class Stage:
    """A stage's manifest: its folder name, the schema of its rows and the column that identifies a row."""

    name: str
    schema: pa.Schema
    key: str
    # Rows sharing this column's value are replaced together: the newest part holding a value wins all
    # of its rows (an image re-cropped with --force may yield fewer faces than before).
    group: str | None = None

    @property
    def columns(self) -> list[str]:
        return self.schema.names


def _outcome_fields() -> list[pa.Field]:
    return [
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),  # stable short code, e.g. http_404, md5_mismatch, decode_error
        pa.field(MESSAGE, pa.string()),  # what happened, for people
    ]


CRAWL = Stage(
    name="crawl",
    key="post_id",
    schema=pa.schema(
        [
            pa.field(
                "post_id", pa.string(), nullable=False
            ),  # "<source>:<source_id>", e.g. safebooru:6077620
            pa.field("source", pa.string(), nullable=False),  # board name, or "local" for ingested folders
            pa.field("source_id", pa.string(), nullable=False),  # the board's post id, or the file's path
            pa.field("query", pa.string()),  # the tag query (or folder) that reached the post
            *_outcome_fields(),
            pa.field("image_id", pa.string()),  # md5 hex of the stored bytes
            pa.field("path", pa.string()),  # stored original, relative to the workspace
            pa.field("url", pa.string()),  # where the bytes came from
            pa.field("format", pa.string()),  # from the bytes' signature: jpeg, png, gif, webp, bmp, tiff
            pa.field("width", pa.int32()),  # decoded size, EXIF orientation applied
            pa.field("height", pa.int32()),
            pa.field("frames", pa.int32()),
            pa.field("bytes", pa.int64()),
            pa.field("api_md5", pa.string()),  # the md5 the board claimed
            pa.field("rating", pa.string()),  # general | sensitive | questionable | explicit
            pa.field("score", pa.int32()),
            pa.field("tags", _TAG_LIST),  # every tag, as the board lists them
            *(pa.field(f"tags_{name}", _TAG_LIST) for name in TAG_CATEGORY_NAMES),
            pa.field("created_at", pa.string()),  # the board's own timestamp text
            pa.field("fetched_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

TAG_CATEGORIES = Stage(
    name="tag_categories",
    key="tag",
    schema=pa.schema(
        [
            pa.field("tag", pa.string(), nullable=False),
            pa.field("category", pa.string(), nullable=False),  # one of TAG_CATEGORY_NAMES
            pa.field("source", pa.string(), nullable=False),  # tag_api | post_page | sidecar
            pa.field("fetched_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

CROP = Stage(
    name="crop",
    key="face_id",
    group="image_id",
    schema=pa.schema(
        [
            # "<image_id>-<k>" for a face; the bare image_id for an image's no_face or failed row.
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            *_outcome_fields(),
            pa.field("face_index", pa.int32()),  # k, in descending detector score
            pa.field("detector", pa.string()),  # cascade | frcnn
            pa.field("score", pa.float32()),  # the cascade's level weight, or the R-CNN's probability
            pa.field("face_x0", pa.float32()),  # face box in original pixels (orientation applied)
            pa.field("face_y0", pa.float32()),
            pa.field("face_x1", pa.float32()),
            pa.field("face_y1", pa.float32()),
            pa.field("crop_x0", pa.int32()),  # square crop box; may reach past the image (padded)
            pa.field("crop_y0", pa.int32()),
            pa.field("crop_x1", pa.int32()),
            pa.field("crop_y1", pa.int32()),
            pa.field("padded", pa.bool_()),
            pa.field("path", pa.string()),  # crops/ab/<face_id>.png, relative to the workspace
            pa.field("size", pa.int32()),  # crop side in pixels
            pa.field("source_path", pa.string()),  # the original, relative to the workspace
            pa.field("image_width", pa.int32()),
            pa.field("image_height", pa.int32()),
            pa.field("frames", pa.int32()),
            pa.field("mode", pa.string()),  # the original's pixel mode: RGB, RGBA, P, L, CMYK, I;16 ...
            pa.field("is_monochrome", pa.bool_()),  # greyscale, sketches, screentone
            pa.field("cropped_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

# Where a face's label came from: the tagger, the post's own booru tags, or both.
LABEL_SOURCES = ("tagger", "booru", "both")
BOORU_CATEGORIES = ("general", "character", "copyright", "artist")

TAG = Stage(
    name="tag",
    key="face_id",
    schema=pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            *_outcome_fields(),
            pa.field("model", pa.string()),  # the tagger: hub id or folder
            pa.field("rating", pa.string()),  # general | sensitive | questionable | explicit
            pa.field("rating_score", pa.float32()),
            # the tagger's labels above their thresholds, most probable first
            pa.field("tags_general", _TAG_LIST),
            pa.field("tags_character", _TAG_LIST),
            # every tag (ratings aside) the tagger gave at least the floor, so thresholds can change later
            pa.field("scored_tags", _TAG_LIST),
            pa.field("scores", pa.list_(pa.float32())),
            # the post's own tags (every post that stored this image), by category
            *(pa.field(f"booru_{name}", _TAG_LIST) for name in BOORU_CATEGORIES),
            # general and character labels from both, canonical (underscores, lower case), with their source
            pa.field("labels", _TAG_LIST),
            pa.field("label_sources", _TAG_LIST),
            pa.field("tagged_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

EMBED = Stage(
    name="embed",
    key="face_id",
    schema=pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            *_outcome_fields(),
            pa.field("model", pa.string()),  # instdisc:<backbone> (trained here) or timm:<name>
            # L2-normalised; every row of a part has the same length (the part metadata's `dim`)
            pa.field("embedding", pa.list_(pa.float32())),
            pa.field("embedded_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

FILTER = Stage(
    name="filter",
    key="face_id",
    schema=pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            # ok = kept; skipped with error low_score, duplicate or bad_seed
            *_outcome_fields(),
            pa.field("model", pa.string()),  # the embedding the scores come from
            # what the threshold applies to: the seeds' vote (or mean similarity to good seeds), or the
            # learned score's probability (params: score)
            pa.field("score", pa.float32()),
            pa.field("seed", pa.string()),  # good | bad, for the seeds given
            pa.field("mined", pa.string()),  # good | bad, for faces the mining rounds took in
            pa.field("nearest_seeds", _TAG_LIST),  # face ids of the nearest seeds, nearest first
            pa.field("dup_group", pa.string()),  # the keeper's face id, for every member of a group
            pa.field("dup_of", pa.string()),  # the keeper's face id, for the members dropped
            pa.field("keep", pa.bool_()),
            pa.field("filtered_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

# What people decided about faces (`curate serve`'s review page). One part per decision, written before
# the decision is answered; the newest row per face holds its current decision.
REVIEW_DECISIONS = ("good", "bad", "skip")

REVIEW = Stage(
    name="review",
    key="face_id",
    schema=pa.schema(
        [
            pa.field("face_id", pa.string(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            *_outcome_fields(),  # always ok: a decision that could not be written is never answered
            # good | bad | skip; null once undo has taken back every decision on the face
            pa.field("decision", pa.string()),
            pa.field("undo", pa.bool_(), nullable=False),  # this row takes back the face's previous one
            pa.field("decision_id", pa.string(), nullable=False),  # unique: compaction may copy rows
            pa.field("reviewer", pa.string()),  # who decided: serve, or a name a client gave
            pa.field("reviewed_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        ]
    ),
)

STAGES: dict[str, Stage] = {
    stage.name: stage for stage in (CRAWL, TAG_CATEGORIES, CROP, TAG, EMBED, FILTER, REVIEW)
}


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def part_files(ws: Workspace, stage: Stage) -> list[Path]:
    """The stage's whole parts in the order they were written."""
    folder = ws.manifest_dir(stage.name)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("part-*.parquet"))


def write_part(
    ws: Workspace,
    stage: Stage,
    rows: Sequence[Mapping[str, Any]] | pa.Table,
    params: Mapping[str, Any] | None = None,
    *,
    complete: bool = False,
) -> Path:
    """Write rows as one new part (temporary name, fsync, rename) carrying params and tool version."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=stage.schema)
    table = table.replace_schema_metadata(
        {
            f"{_META_PREFIX}stage": stage.name,
            f"{_META_PREFIX}version": __version__,
            f"{_META_PREFIX}params": json.dumps(dict(params or {}), sort_keys=True, default=str),
            f"{_META_PREFIX}complete": "1" if complete else "0",
            f"{_META_PREFIX}written_at": now_utc().isoformat(timespec="milliseconds"),
        }
    )
    folder = ws.manifest_dir(stage.name)
    folder.mkdir(parents=True, exist_ok=True)
    # Time first so names sort in writing order; pid and a random tail keep parallel writers apart.
    name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:6]}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    final = folder / name
    os.replace(tmp, final)
    _fsync_dir(folder)
    return final


def part_metadata(path: Path) -> dict[str, Any]:
    """A part's stage, version, params (decoded), completion flag and row count, from its footer only."""
    meta = pq.read_metadata(path)
    raw = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items() if k.startswith(b"curate.")}
    return {
        "stage": raw.get(f"{_META_PREFIX}stage"),
        "version": raw.get(f"{_META_PREFIX}version"),
        "params": json.loads(raw.get(f"{_META_PREFIX}params", "{}")),
        "complete": raw.get(f"{_META_PREFIX}complete") == "1",
        "written_at": raw.get(f"{_META_PREFIX}written_at"),
        "rows": meta.num_rows,
    }


def read_stage(ws: Workspace, stage: Stage, columns: Iterable[str] | None = None) -> pa.Table:
    """Every id's newest row of the stage (empty table of the stage's schema when nothing is written)."""
    asked = list(columns) if columns is not None else stage.columns
    wanted = [name for name in (stage.key, stage.group) if name and name not in asked] + asked
    files = part_files(ws, stage)
    if not files:
        return stage.schema.empty_table().select(_key_first(stage, asked))
    schema = pa.schema([stage.schema.field(name) for name in wanted])
    tables = [pq.read_table(f, columns=wanted, schema=schema) for f in files]
    if stage.group:
        tables = _newest_part_per_group(tables, stage.group)
    table = pa.concat_tables(tables).replace_schema_metadata(None)
    return _latest_per_key(table, stage.key).select(_key_first(stage, asked))


def _key_first(stage: Stage, asked: list[str]) -> list[str]:
    return asked if stage.key in asked else [stage.key, *asked]


def _newest_part_per_group(tables: list[pa.Table], group: str) -> list[pa.Table]:
    """Drop each group's rows from every part but the newest one holding that group."""
    newest: dict[str, int] = {}
    for index, table in enumerate(tables):
        for value in pc.unique(table[group]).to_pylist():
            newest[value] = index
    owned: list[list[str]] = [[] for _ in tables]
    for value, index in newest.items():
        owned[index].append(value)
    return [
        table.filter(pc.is_in(table[group], value_set=pa.array(mine, pa.string())))
        for table, mine in zip(tables, owned, strict=True)
    ]


def done_keys(ws: Workspace, stage: Stage, *, statuses: Iterable[str] = STATUSES) -> set[str]:
    """Ids whose newest row has one of `statuses`: what a resumed run skips."""
    table = read_stage(ws, stage, columns=[stage.key, STATUS])
    keep = pc.is_in(table[STATUS], value_set=pa.array(list(statuses), pa.string()))
    return set(table.filter(keep)[stage.key].to_pylist())


def _latest_per_key(table: pa.Table, key: str) -> pa.Table:
    if table.num_rows == 0 or pc.count_distinct(table[key]).as_py() == table.num_rows:
        return table
    order = pa.array(range(table.num_rows), pa.int64())
    last = table.append_column("__row", order).group_by(key, use_threads=False).aggregate([("__row", "max")])
    rows = pc.sort_indices(last["__row_max"])
    return table.take(pc.take(last["__row_max"], rows))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PartWriter:
    """Buffers a stage's rows and writes them as parts every `rows_per_part` rows or `seconds` seconds."""

    def __init__(
        self,
        ws: Workspace,
        stage: Stage,
        params: Mapping[str, Any],
        *,
        rows_per_part: int = 1000,
        seconds: float = 10.0,
    ):
        self.ws, self.stage, self.params = ws, stage, dict(params)
        self.rows_per_part, self.seconds = rows_per_part, seconds
        self.rows: list[dict[str, Any]] = []
        self.written = 0
        self._last = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.extend((row,))

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows that must land in the same part (e.g. every face of one image)."""
        self.rows.extend(rows)
        if len(self.rows) >= self.rows_per_part or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self, *, complete: bool = False, **extra_params: Any) -> None:
        """Write what is buffered; a completing flush writes a part even with no rows, as the marker."""
        if self.rows or complete:
            write_part(self.ws, self.stage, self.rows, {**self.params, **extra_params}, complete=complete)
            self.written += len(self.rows)
            self.rows = []
        self._last = time.monotonic()


@dataclass(frozen=True)
class FaceCrop:
    """A face the crop stage cut out: its id, its original's id, and the crop file in the workspace."""

    face_id: str
    image_id: str
    path: str


def face_crops(ws: Workspace) -> list[FaceCrop]:
    """Every face with a crop file (its newest crop row is ok), in manifest order.

    InvalidArgument when the crop stage has not run; an empty list when it found no face.
    """
    table = read_stage(ws, CROP, columns=["image_id", STATUS, "path"])
    if table.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no crop manifest yet: run `curate crop` first")
    table = table.filter(pc.and_(pc.equal(table[STATUS], OK), pc.is_valid(table["path"])))
    columns = (table[name].to_pylist() for name in ("face_id", "image_id", "path"))
    return [FaceCrop(*values) for values in zip(*columns, strict=True)]
