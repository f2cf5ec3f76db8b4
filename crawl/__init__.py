"""Sources of originals: Gelbooru-0.2 boards (Safebooru by default) and local folders."""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved on first use: download workers import this package and need neither pyarrow nor the stages.
_EXPORTS = {
    "CrawlOptions": "crawl.board",
    "CrawlReport": "crawl.board",
    "crawl_board": "crawl.board",
    "IngestReport": "crawl.local",
    "ingest_folder": "crawl.local",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crawl' has no attribute {name!r}")
