"""`curate ingest`: a local folder (a Kaggle-style dataset, a gallery-dl download) into the crawl manifest.

Files are walked recursively, checked like downloads, and copied content-addressed into the workspace.
Tags come from sidecar files when present: `name.txt` / `name.ext.txt` (comma- or space-separated) and
`name.json` / `name.ext.json` (gallery-dl and booru metadata: `tags`, `tag_string`, `tags_<category>`,
`tag_string_<category>`, `rating`, `score`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from crawl.download import CHUNK, Limits, StoredImage, reuse_stored, store_file
from crawl.gelbooru import RATINGS
from crawl.rows import Outcome, SampleInfo, crawl_row
from crawl.tag_categories import TagCategoryCache
from curate.errors import InvalidArgument
from curate.images import ImageCheckError
from curate.manifest import CRAWL, FAILED, OK, SKIPPED, STATUSES, PartWriter, done_keys
from curate.progress import StageProgress
from curate.workspace import Workspace

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
SOURCE = "local"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_SIDECAR_BYTES = 1 << 20
_CATEGORY_KEYS = {
    "artist": "artist",
    "character": "character",
    "copyright": "copyright",
    "general": "general",
    "metadata": "metadata",
    "meta": "metadata",
}


@dataclass
class Sidecar:
    """Tags and post fields read from files beside an image."""

    tags: list[str] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)
    rating: str | None = None
    score: int | None = None


@dataclass
class IngestReport:
    root: Path
    listed: int = 0
    already_done: int = 0
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def written(self) -> int:
        return sum(self.outcomes.values())


def ingest_folder(
    folder: str | Path,
    workspace: str | Path,
    *,
    min_side: int = 0,
    concurrency: int = 4,
    force: bool = False,
    retry_failed: bool = False,
    limits: Limits | None = None,
    rows_per_part: int = 1000,
    progress: bool = True,
) -> IngestReport:
    """Add every image under `folder` to the workspace's crawl manifest (skipping files already there)."""
    root = Path(folder).expanduser().resolve()
    limits = limits or Limits()
    if not root.is_dir():
        raise InvalidArgument(f"{folder} is not a folder")
    if concurrency < 1 or min_side < 0:
        raise InvalidArgument("--concurrency must be at least 1 and --min-side 0 or more")
    ws = Workspace.open(workspace)
    if root == ws.root or ws.root in root.parents:
        raise InvalidArgument(f"{root} lies inside the workspace {ws.root}; ingest a folder outside it")
    ws.sweep_temp()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    skip = set() if force else done_keys(ws, CRAWL, statuses=(OK, SKIPPED) if retry_failed else STATUSES)
    report = IngestReport(root, listed=len(files))
    todo = [p for p in files if _sample_id(p) not in skip]
    report.already_done = len(files) - len(todo)
    if not todo:
        return report
    cache = TagCategoryCache(ws)
    writer = PartWriter(ws, CRAWL, {"query": str(root), "min_side": min_side}, rows_per_part=rows_per_part)
    scratch = ws.temp_dir()
    bar = StageProgress("ingest", len(todo), unit="files", enabled=progress)
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="ingest")
    complete = False
    try:
        with bar:
            results = _in_order(pool, lambda p: _ingest_one(ws, p, scratch, limits), todo, 4 * concurrency)
            for path, (stored, outcome) in results:
                sidecar = read_sidecar(path)
                cache.record(sidecar.categories, "sidecar")
                if stored and min_side and min(stored.info.width, stored.info.height) < min_side:
                    outcome = Outcome(SKIPPED, "too_small", f"{stored.info.width}x{stored.info.height}")
                sample = SampleInfo(
                    source=SOURCE,
                    source_id=path.as_posix(),
                    query=str(root),
                    url=path.as_uri(),
                    rating=sidecar.rating,
                    score=sidecar.score,
                    tags=sidecar.tags,
                )
                writer.add(crawl_row(ws, sample, outcome, stored, cache.group(sidecar.tags)))
                report.outcomes[(outcome.status, outcome.error)] += 1
                bar.advance(1, stored.size if stored and not stored.reused else 0)
        complete = True
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.flush(complete=complete)
        cache.save()
        shutil.rmtree(scratch, ignore_errors=True)
        report.seconds, report.bytes = bar.elapsed, bar.bytes
    return report


def _in_order(
    pool: ThreadPoolExecutor, work: Callable[[T], R], items: list[T], window: int
) -> Iterator[tuple[T, R]]:
    """`(item, work(item))` in order, with at most `window` items submitted: memory stays flat."""
    pending: deque[tuple[T, Future[R]]] = deque()
    for item in items:
        pending.append((item, pool.submit(work, item)))
        if len(pending) >= window:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _sample_id(path: Path) -> str:
    return f"{SOURCE}:{path.as_posix()}"


def _ingest_one(
    ws: Workspace, path: Path, scratch: Path, limits: Limits
) -> tuple[StoredImage | None, Outcome]:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            return None, Outcome(FAILED, "too_large", f"{size:,} bytes, the limit is {limits.max_bytes:,}")
        tmp = scratch / uuid.uuid4().hex
        try:
            digest = _copy_hashing(path, tmp)
            stored = reuse_stored(ws, digest, limits) or store_file(ws, tmp, digest, size, limits)
        finally:
            tmp.unlink(missing_ok=True)
    except ImageCheckError as err:
        return None, Outcome(FAILED, err.code, err.message)
    except OSError as err:
        return None, Outcome(FAILED, "read_error", f"cannot read {path}: {err}")
    return stored, Outcome(OK, None, "already stored" if stored.reused else None)


def _copy_hashing(source: Path, dest: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(source, "rb") as reader, open(dest, "wb") as writer:
        while chunk := reader.read(CHUNK * 16):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()


def read_sidecar(image: Path) -> Sidecar:
    """Tags beside `image`: JSON metadata first (it can carry categories), else a plain tag list."""
    for candidate in (image.with_name(image.name + ".json"), image.with_suffix(".json")):
        data = _read_json(candidate)
        if isinstance(data, dict):
            return _from_json(data)
    for candidate in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if candidate.is_file() and candidate.stat().st_size <= MAX_SIDECAR_BYTES:
            return Sidecar(tags=parse_tag_text(candidate.read_text(encoding="utf-8", errors="replace")))
    return Sidecar()


def parse_tag_text(text: str) -> list[str]:
    """`a, b c, d` (captions with commas: spaces become underscores) or `a b_c d` (booru style)."""
    if "," in text:
        words = [t.strip().replace(" ", "_") for t in text.replace("\n", ",").split(",")]
    else:
        words = text.split()
    return list(dict.fromkeys(w for w in words if w))


def _from_json(data: dict[str, Any]) -> Sidecar:
    sidecar = Sidecar()
    for key, value in data.items():
        for prefix in ("tags_", "tag_string_"):
            category = _CATEGORY_KEYS.get(key[len(prefix) :]) if key.startswith(prefix) else None
            if category:
                for tag in _tag_list(value):
                    sidecar.categories[tag] = category
    listed = data.get("tags", data.get("tag_string"))
    sidecar.tags = _tag_list(listed) if listed is not None else list(sidecar.categories)
    rating = str(data.get("rating") or "").lower()
    sidecar.rating = RATINGS.get(rating, rating or None)
    score = data.get("score")
    sidecar.score = score if isinstance(score, int) and not isinstance(score, bool) else None
    return sidecar


def _tag_list(value: object) -> list[str]:
    if isinstance(value, str):
        return parse_tag_text(value)
    if isinstance(value, list):
        return [str(v).strip().replace(" ", "_") for v in value if str(v).strip()]
    return []


def _read_json(path: Path) -> object:
    if not path.is_file() or path.stat().st_size > MAX_SIDECAR_BYTES:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except ValueError:
        log.warning("ignoring unreadable sidecar %s", path)
        return None
