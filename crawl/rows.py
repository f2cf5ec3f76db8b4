"""Crawl-manifest rows, built in one place for board posts and ingested files alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crawl.download import StoredImage
from curate.manifest import ERROR, MESSAGE, STATUS, TAG_CATEGORY_NAMES, now_utc
from curate.workspace import Workspace


@dataclass(frozen=True)
class Outcome:
    """What became of a sample: status, and for skipped/failed ones a stable code and a message."""

    status: str
    error: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class SampleInfo:
    """What the source said about a sample, before anything was fetched."""

    source: str
    source_id: str
    query: str
    url: str | None = None
    api_md5: str | None = None
    rating: str | None = None
    score: int | None = None
    tags: Sequence[str] = ()
    created_at: str | None = None

    @property
    def post_id(self) -> str:
        return f"{self.source}:{self.source_id}"


def crawl_row(
    ws: Workspace,
    sample: SampleInfo,
    outcome: Outcome,
    stored: StoredImage | None,
    tag_groups: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """One row of the crawl manifest (see `curate.manifest.CRAWL`)."""
    info = stored.info if stored else None
    return {
        "post_id": sample.post_id,
        "source": sample.source,
        "source_id": sample.source_id,
        "query": sample.query,
        STATUS: outcome.status,
        ERROR: outcome.error,
        MESSAGE: outcome.message,
        "image_id": stored.image_id if stored else None,
        "path": ws.relative(stored.path) if stored else None,
        "url": sample.url,
        "format": info.format if info else None,
        "width": info.width if info else None,
        "height": info.height if info else None,
        "frames": info.frames if info else None,
        "bytes": stored.size if stored else None,
        "api_md5": sample.api_md5,
        "rating": sample.rating,
        "score": sample.score,
        "tags": list(sample.tags),
        **{f"tags_{name}": list(tag_groups.get(name, ())) for name in TAG_CATEGORY_NAMES},
        "created_at": sample.created_at,
        "fetched_at": now_utc(),
    }
