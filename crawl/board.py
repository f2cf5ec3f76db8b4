"""`curate crawl`: list a board's posts for a tag query and fetch their images, one manifest row per post.

The main thread lists pages, resolves tag categories and writes manifest parts; downloads run in threads
or worker processes (`crawl.fetchers`).
A post's row is written only after its image has landed, so a kill at any moment loses nothing but work
in flight, which the next run redoes: parts already written say which posts are done.
"""

from __future__ import annotations

import logging
import queue
import shutil
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from crawl.download import Limits, StoredImage
from crawl.fetchers import (
    Fetcher,
    FetchSettings,
    ProcessFetcher,
    ThreadFetcher,
    WorkerDied,
    auto_processes,
)
from crawl.gelbooru import MAX_PAGE_SIZE, SAFEBOORU_URL, GelbooruClient, Post
from crawl.http import FetchError, HttpClient, RetryPolicy
from crawl.rows import Outcome, SampleInfo, crawl_row
from crawl.tag_categories import TagCategoryCache, TagCategoryResolver
from curate.errors import CurateError, InvalidArgument, SourceError
from curate.images import ImageCheckError
from curate.manifest import (
    CRAWL,
    FAILED,
    OK,
    SKIPPED,
    STATUSES,
    PartWriter,
    done_keys,
    part_files,
    part_metadata,
)
from curate.progress import StageProgress
from curate.workspace import Workspace

log = logging.getLogger(__name__)

SIZES = ("original", "sample")
RATING_WORDS = ("general", "sensitive", "questionable", "explicit")
NOT_IMAGES = frozenset({"mp4", "webm", "swf", "zip", "flv", "avi", "mov", "mkv"})


@dataclass(frozen=True)
class CrawlOptions:
    """Everything `curate crawl` takes; see the CLI help for each."""

    tags: str
    limit: int
    base_url: str = SAFEBOORU_URL
    rate: float = 2.0
    concurrency: int = 32
    size: str = "original"
    min_side: int = 0
    ratings: tuple[str, ...] = ()
    api_format: str = "xml"
    tag_categories: bool = True
    force: bool = False
    retry_failed: bool = False
    rows_per_part: int = 1000
    timeout: tuple[float, float] = (10.0, 30.0)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits = field(default_factory=Limits)
    allow_hosts: tuple[str, ...] = ()
    processes: int = 0  # 0: one per core when the rate allows it (see crawl.fetchers), else 1
    # For boards that require them; kept out of reprs, logs and manifests.
    api_key: str | None = field(default=None, repr=False)
    user_id: str | None = field(default=None, repr=False)

    @property
    def terms(self) -> list[str]:
        return self.tags.split()

    @property
    def query(self) -> str:
        """The query as recorded: terms in a fixed order, since a board does not care about theirs."""
        return " ".join(sorted(set(self.terms)))

    def validate(self) -> None:
        problems = []
        if not self.terms:
            problems.append("--tags is empty: give at least one tag (e.g. --tags 'solo 1girl')")
        if self.limit < 1:
            problems.append(f"--limit must be at least 1, not {self.limit}")
        if self.rate < 0:
            problems.append(f"--rate must be 0 (unlimited) or more requests per second, not {self.rate}")
        if self.concurrency < 1:
            problems.append(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.size not in SIZES:
            problems.append(f"--size must be one of {', '.join(SIZES)}, not {self.size!r}")
        if self.min_side < 0:
            problems.append(f"--min-side must be 0 or more pixels, not {self.min_side}")
        bad = [r for r in self.ratings if r not in RATING_WORDS]
        if bad:
            problems.append(f"--rating takes {', '.join(RATING_WORDS)}; unknown: {', '.join(bad)}")
        if self.api_format not in ("xml", "json"):
            problems.append(f"--api must be xml or json, not {self.api_format!r}")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                f"--base-url must be an http(s) URL such as {SAFEBOORU_URL}, not {self.base_url!r}"
            )
        if self.processes < 0:
            problems.append(f"--processes must be 0 (automatic) or more, not {self.processes}")
        if bool(self.api_key) != bool(self.user_id):
            problems.append("--api-key and --user-id go together: give both or neither")
        if self.rows_per_part < 1:
            problems.append(f"--part-rows must be at least 1, not {self.rows_per_part}")
        if problems:
            raise InvalidArgument("; ".join(problems))

    def params(self) -> dict[str, object]:
        """What goes into each part's metadata."""
        return {
            "query": self.query,
            "limit": self.limit,
            "base_url": self.base_url,
            "size": self.size,
            "min_side": self.min_side,
            "ratings": list(self.ratings),
            "api_format": self.api_format,
        }


@dataclass
class CrawlReport:
    """What a crawl did: rows it wrote by outcome, posts it found already done, and why it stopped."""

    query: str
    up_to_date: bool = False
    listed: int = 0
    already_done: int = 0
    total: int | None = None  # posts the board has for the query (XML listings only)
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    retries: int = 0
    exhausted: bool = False  # the board had fewer posts than --limit
    interrupted: bool = False

    @property
    def written(self) -> int:
        return sum(self.outcomes.values())


def crawl_board(workspace: str | Path, options: CrawlOptions, *, progress: bool = True) -> CrawlReport:
    """Crawl `options.tags` from a Gelbooru-0.2 board into the workspace's crawl manifest."""
    options.validate()
    ws = Workspace.open(workspace)
    ws.sweep_temp()
    report = CrawlReport(options.query)
    if not (options.force or options.retry_failed) and _finished_before(ws, options):
        report.up_to_date = True
        return report
    return _BoardCrawl(ws, options, report, progress).run()


def _finished_before(ws: Workspace, options: CrawlOptions) -> bool:
    """A completed crawl of the same query reached this limit, or the end of the board's posts."""
    for path in reversed(part_files(ws, CRAWL)):
        meta = part_metadata(path)
        params = meta["params"]
        same_query = meta["complete"] and params.get("query") == options.query
        if same_query and (params.get("limit", 0) >= options.limit or params.get("exhausted")):
            return True
    return False


class _BoardCrawl:
    def __init__(self, ws: Workspace, options: CrawlOptions, report: CrawlReport, progress: bool):
        self.ws, self.options, self.report = ws, options, report
        self.http = HttpClient(
            options.base_url,
            rate=options.rate,
            pool_size=options.concurrency,
            timeout=options.timeout,
            retry=options.retry,
            allow_hosts=options.allow_hosts,
        )
        self.client = GelbooruClient(
            self.http,
            options.base_url,
            api_format=options.api_format,
            api_key=options.api_key,
            user_id=options.user_id,
        )
        self.categories = TagCategoryCache(ws)
        self.resolver = TagCategoryResolver(self.client, self.categories) if options.tag_categories else None
        self.writer = PartWriter(ws, CRAWL, options.params(), rows_per_part=options.rows_per_part)
        statuses = (OK, SKIPPED) if options.retry_failed else STATUSES
        self.skip = set() if options.force else done_keys(ws, CRAWL, statuses=statuses)
        self.seen: set[str] = set()
        self.fetcher: Fetcher | None = None
        self.broken: WorkerDied | None = None
        # Each download with the posts waiting on it: posts sharing an md5 share one fetch.
        self.inflight: dict[Future[StoredImage], list[tuple[Post, str]]] = {}
        self.inflight_md5: dict[str, Future[StoredImage]] = {}
        self.finished: queue.SimpleQueue[Future[StoredImage]] = queue.SimpleQueue()  # filled by fetchers
        self.bar = StageProgress("crawl", options.limit, unit="posts", enabled=progress)

    def run(self) -> CrawlReport:
        report = self.report
        scratch = self.ws.temp_dir()
        self.fetcher = self._start_fetcher(scratch)
        failure: CurateError | None = None
        complete = cancel = False
        try:
            with self.bar:
                try:
                    self._list_and_fetch()
                    complete = True
                except CurateError as err:
                    failure = err  # listing broke off: keep what was fetched, then report it
                except KeyboardInterrupt:
                    report.interrupted = cancel = True
                    self.fetcher.close(cancel=True)
                self._drain(keep=0)
                failure = failure or self.broken
                complete = complete and self.broken is None
        finally:
            # After a worker died nobody reads results any more: stop the rest instead of draining them.
            self.fetcher.close(cancel=cancel or self.broken is not None)
            self.writer.flush(complete=complete, exhausted=report.exhausted)
            self.http.close()
            shutil.rmtree(scratch, ignore_errors=True)
            report.seconds = self.bar.elapsed
            report.bytes = self.bar.bytes
            report.retries = self.http.retries + self.fetcher.retries
        if isinstance(failure, SourceError) and report.written:
            saved = f"{report.written} posts finished before that are saved; run again to resume"
            raise SourceError(f"{failure} ({saved})") from failure
        if failure is not None:
            raise failure
        return report

    def _start_fetcher(self, scratch: Path) -> Fetcher:
        options = self.options
        settings = FetchSettings(
            base_url=options.base_url,
            rate=options.rate,
            concurrency=options.concurrency,
            timeout=options.timeout,
            retry=options.retry,
            allow_hosts=options.allow_hosts,
            workspace=self.ws.root,
            scratch=scratch,
            limits=options.limits,
            reuse=not options.force,
        )
        processes = options.processes or auto_processes(options.rate, options.limit)
        if processes > 1:
            return ProcessFetcher(settings, processes)
        return ThreadFetcher(settings, self.http)

    def _list_and_fetch(self) -> None:
        options, report = self.options, self.report
        for page in self.client.iter_pages(options.terms, min(options.limit, MAX_PAGE_SIZE)):
            if report.total is None:
                report.total = page.count
            if self.resolver:
                self.resolver.resolve(page.posts)
            for bad in page.bad:
                sample = SampleInfo(self.client.source, bad.source_id, options.query)
                self._record(sample, Outcome(FAILED, "bad_record", bad.message))
            for post in page.posts:
                if report.listed >= options.limit:
                    return
                if post.post_id in self.seen:
                    continue  # listed twice (posts shifting between pages)
                self.seen.add(post.post_id)
                report.listed += 1
                if post.post_id in self.skip:
                    report.already_done += 1
                    self.bar.advance()
                    continue
                self._start(post)
                self._drain(keep=2 * options.concurrency)
                if self.broken:
                    raise self.broken
            if report.listed >= options.limit:
                return
        report.exhausted = True

    def _start(self, post: Post) -> None:
        """Settle a post from its listing alone when we can, else queue its download."""
        options = self.options
        url = post.sample_url if options.size == "sample" and post.sample_url else post.file_url
        sample = self._sample(post, url)
        if options.ratings and post.rating not in options.ratings:
            return self._record(sample, Outcome(SKIPPED, "rating", f"rating {post.rating} not wanted"))
        if (
            options.min_side
            and post.width
            and post.height
            and min(post.width, post.height) < options.min_side
        ):
            size = f"{post.width}x{post.height}"
            return self._record(sample, Outcome(SKIPPED, "too_small", f"{size} is under --min-side"))
        if not url:
            return self._record(sample, Outcome(FAILED, "bad_record", "the post has no file URL"))
        try:
            self.http.check_url(url)
        except FetchError as err:
            return self._record(sample, Outcome(FAILED, err.code, err.message))
        extension = urlsplit(url).path.rsplit(".", 1)[-1].lower()
        if extension in NOT_IMAGES:
            return self._record(
                sample, Outcome(SKIPPED, "unsupported_format", f"{extension} is not an image")
            )
        expected = post.md5 if url == post.file_url else None  # a sample's bytes are not the original's
        if expected and expected in self.inflight_md5:
            self.inflight[self.inflight_md5[expected]].append((post, url))
            return None
        assert self.fetcher is not None
        future = self.fetcher.submit(url, expected)
        self.inflight[future] = [(post, url)]
        future.add_done_callback(self.finished.put)
        if expected:
            self.inflight_md5[expected] = future
        return None

    def _drain(self, *, keep: int) -> None:
        """Record finished downloads, waiting while more than `keep` are in flight."""
        while self.inflight:
            try:
                future = self.finished.get(block=len(self.inflight) > keep)
            except queue.Empty:
                return
            waiting = self.inflight.pop(future)
            key = waiting[0][0].md5
            if key and self.inflight_md5.get(key) is future:  # a sample's download was never keyed
                del self.inflight_md5[key]
            for follower, (post, url) in enumerate(waiting):
                self._finish(post, url, future, shared=follower > 0)

    def _finish(self, post: Post, url: str, future: Future[StoredImage], *, shared: bool = False) -> None:
        sample = self._sample(post, url)
        if future.cancelled():
            return  # interrupted before it started: no row, the next run fetches it
        try:
            stored = future.result()
            if shared:
                stored = replace(stored, reused=True)
        except (FetchError, ImageCheckError) as err:
            return self._record(sample, Outcome(FAILED, err.code, err.message))
        except WorkerDied as err:
            self.broken = err  # no row: the post is fetched again when the crawl resumes
            return None
        except Exception as err:  # a bug must cost one row, not the crawl
            log.exception("unexpected error fetching %s", url)
            return self._record(sample, Outcome(FAILED, "internal_error", repr(err)))
        side = min(stored.info.width, stored.info.height)
        if self.options.min_side and side < self.options.min_side:
            outcome = Outcome(
                SKIPPED, "too_small", f"{stored.info.width}x{stored.info.height} is under --min-side"
            )
        else:
            outcome = Outcome(OK, None, "already stored" if stored.reused else None)
        return self._record(sample, outcome, stored)

    def _sample(self, post: Post, url: str | None) -> SampleInfo:
        return SampleInfo(
            source=post.source,
            source_id=str(post.id),
            query=self.options.query,
            url=url,
            api_md5=post.md5,
            rating=post.rating,
            score=post.score,
            tags=post.tags,
            created_at=post.created_at,
        )

    def _record(self, sample: SampleInfo, outcome: Outcome, stored: StoredImage | None = None) -> None:
        self.writer.add(crawl_row(self.ws, sample, outcome, stored, self.categories.group(sample.tags)))
        self.report.outcomes[(outcome.status, outcome.error)] += 1
        self.bar.advance(1, stored.size if stored and not stored.reused else 0)
