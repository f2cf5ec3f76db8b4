"""Sources of originals: Gelbooru-0.2 boards (Safebooru by default) and local folders."""

from crawl.board import CrawlOptions, CrawlReport, crawl_board
from crawl.local import IngestReport, ingest_folder

__all__ = ["CrawlOptions", "CrawlReport", "IngestReport", "crawl_board", "ingest_folder"]
