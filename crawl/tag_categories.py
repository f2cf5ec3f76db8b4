"""Tag categories (artist, character, copyright, general, metadata) for every tag a crawl sees.

The post API does not carry them. We ask the tag API in batches, fall back to the tag sidebar of a post
page for what it leaves out, and keep every answer in the workspace's `tag_categories` manifest so each
tag is looked up once per workspace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from crawl.gelbooru import TAG_BATCH, GelbooruClient, Post
from crawl.http import FetchError
from curate.errors import SourceError
from curate.manifest import TAG_CATEGORIES, TAG_CATEGORY_NAMES, now_utc, read_stage, write_part
from curate.workspace import Workspace

log = logging.getLogger(__name__)


class TagCategoryCache:
    """Known categories, loaded from and saved to the workspace."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        table = read_stage(ws, TAG_CATEGORIES, columns=["tag", "category"])
        self._unsaved: list[dict[str, object]] = []
        self.known: dict[str, str] = dict(
            zip(table["tag"].to_pylist(), table["category"].to_pylist(), strict=True)
        )

    def record(self, categories: Mapping[str, str], source: str) -> None:
        """Keep new answers; `save` writes them."""
        stamp = now_utc()
        for tag, category in categories.items():
            if self.known.get(tag) != category:
                self.known[tag] = category
                self._unsaved.append(
                    {"tag": tag, "category": category, "source": source, "fetched_at": stamp}
                )

    def save(self) -> None:
        """Write the answers not yet saved as one part. Losing them to a kill costs only a lookup again:
        rows already carry their tags grouped by category."""
        if self._unsaved:
            write_part(self.ws, TAG_CATEGORIES, self._unsaved)
            self._unsaved = []

    def group(self, tags: Iterable[str]) -> dict[str, list[str]]:
        """Tags by category; tags of unknown category appear only in the post's full tag list."""
        groups: dict[str, list[str]] = {name: [] for name in TAG_CATEGORY_NAMES}
        for tag in tags:
            category = self.known.get(tag)
            if category in groups:
                groups[category].append(tag)
        return groups


class TagCategoryResolver:
    """Finds categories of the tags in a page of posts: tag API first, then post-page sidebars."""

    def __init__(self, client: GelbooruClient, cache: TagCategoryCache):
        self.client = client
        self.cache = cache
        self.unresolved: set[str] = set()  # asked both ways this run; not asked again until the next run
        self.requests = 0

    def resolve(self, posts: list[Post]) -> None:
        unknown = {t for p in posts for t in p.tags} - self.cache.known.keys() - self.unresolved
        if not unknown:
            return
        names = sorted(unknown)
        for start in range(0, len(names), TAG_BATCH):
            batch = names[start : start + TAG_BATCH]
            try:
                self.requests += 1
                self.cache.record(self.client.tag_types(batch), "tag_api")
            except (FetchError, SourceError) as err:
                log.warning("tag API failed (%s); falling back to post pages", getattr(err, "message", err))
        left = unknown - self.cache.known.keys()
        while left:
            # The post whose sidebar answers the most of what is left.
            post = max(posts, key=lambda p: len(left.intersection(p.tags)))
            covered = left.intersection(post.tags)
            if not covered:
                break
            try:
                self.requests += 1
                self.cache.record(self.client.post_page_categories(post.id), "post_page")
            except (FetchError, SourceError) as err:
                log.warning("post page %s failed: %s", post.id, getattr(err, "message", err))
            left -= covered
            left -= self.cache.known.keys()
        if left:
            log.info("%d tags have no known category: %s", len(left), ", ".join(sorted(left)[:10]))
        self.unresolved |= left
        self.cache.save()
