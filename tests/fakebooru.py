"""A Safebooru-like Gelbooru 0.2 server for tests and benchmarks, with injectable faults.

Start it in-process with ``with FakeBooru(posts) as booru: ...`` (port 0, background thread), or as a
subprocess with ``python -m tests.fakebooru --images DIR --posts N --latency 0.05 --distinct``, which
prints ``READY http://127.0.0.1:PORT`` and serves until killed or until its stdin pipe closes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import http
import json
import os
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, quote_plus, urlsplit
from xml.sax.saxutils import escape as xml_escape

GENERAL, ARTIST, COPYRIGHT, CHARACTER, METADATA = 0, 1, 3, 4, 5
TYPE_CLASSES = {0: "general", 1: "artist", 2: "deprecated", 3: "copyright", 4: "character", 5: "metadata"}
# Sidebar order on Gelbooru 0.2 post pages.
SIDEBAR_ORDER = [
    (COPYRIGHT, "Copyright"),
    (CHARACTER, "Character"),
    (ARTIST, "Artist"),
    (GENERAL, "General"),
    (METADATA, "Meta"),
    (2, "Deprecated"),
]
JSON_RATINGS = {"s": "general", "g": "general", "q": "questionable", "e": "explicit"}
RATING_LETTERS = {
    "s": "s",
    "safe": "s",
    "g": "s",
    "general": "s",
    "q": "q",
    "questionable": "q",
    "e": "e",
    "explicit": "e",
}
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
DEFAULT_TAG_TYPES = {"artist_a": ARTIST, "series_b": COPYRIGHT, "char_c": CHARACTER, "highres": METADATA}

XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'
TOO_DEEP = "Too deep! Pull it back some. Holy fuck."
HTML_ERROR = b"<!DOCTYPE html><html><body>Error</body></html>"
MALFORMED = {
    "xml": b'<?xml version="1.0"?><posts count="5" offset="0"><post id="1" ',
    "json": b'[{"id": 1, "hash": ',
}
CHANGE = 1700000000

_META = re.compile(r"^([a-z_]+):(.+)$")
_NUMERIC = re.compile(r"^(<=|>=|<|>|=)?(-?\d+)$")


@dataclass
class FakePost:
    """One post: the bytes served at its file URL and what the API claims about it."""

    id: int
    data: bytes
    ext: str
    tags: list[str]
    rating: str = "s"
    score: int | None = None
    width: int = 0
    height: int = 0
    md5: str = ""
    file_url: str | None = None
    created_at: str = "Sat Nov 21 12:00:00 +0000 2026"

    def __post_init__(self) -> None:
        if not self.md5:
            self.md5 = hashlib.md5(self.data).hexdigest()
        if not self.width and not self.height:
            self.width, self.height = image_size(self.data)


@dataclass
class RequestLog:
    """One request as the server saw it; `time` is time.monotonic() at arrival."""

    method: str
    path: str
    query: dict[str, str]
    raw: str
    time: float
    status: int = 0  # 0 until answered, and for a connection reset without a response
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Rule:
    kind: str
    match: str
    times: int | None
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    fmt: str = "any"


class Faults:
    """Injected misbehaviour; every method is safe to call while the server runs.

    A rule matches a request when its `path_contains` is a substring of the raw path plus query string.
    Rules with a `times` count stop after firing that often (None: forever). `fired` counts firings by
    method name (and "too_deep" for `too_deep_after_pid`).
    """

    def __init__(self) -> None:
        self.latency: float = 0.0
        self.too_deep_after_pid: int | None = None
        self.fired: Counter[str] = Counter()
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    def rate_limit(
        self, path_contains: str, times: int | None = 1, status: int = 429, retry_after: str | None = "1"
    ) -> None:
        """Answer `status` (429/503) with an optional Retry-After header."""
        self._add(_Rule("rate_limit", path_contains, times, status=status, retry_after=retry_after))

    def reset(self, path_contains: str, times: int | None = 1) -> None:
        """Drop the connection with a TCP reset and no response."""
        self._add(_Rule("reset", path_contains, times))

    def truncate(self, path_contains: str, times: int | None = 1) -> None:
        """Send the full Content-Length but only half the body, then close."""
        self._add(_Rule("truncate", path_contains, times))

    def html_as_image(self, path_contains: str, times: int | None = None) -> None:
        """Serve an HTML error page as 200 image/jpeg."""
        self._add(_Rule("html_as_image", path_contains, times))

    def slow(self, path_contains: str, seconds: float, times: int | None = 1) -> None:
        """Sleep `seconds` before answering."""
        self._add(_Rule("slow", path_contains, times, seconds=seconds))

    def status_for(self, path_contains: str, status: int, times: int | None = None) -> None:
        """Answer a bare `status` (e.g. 404 for one image)."""
        self._add(_Rule("status_for", path_contains, times, status=status))

    def empty_pages(self, times: int | None = 1) -> None:
        """Listings answer no posts but the real total count."""
        self._add(_Rule("empty_pages", "", times))

    def short_pages(self, times: int | None = 1) -> None:
        """Listings answer the first half of the page with the real total count."""
        self._add(_Rule("short_pages", "", times))

    def malformed_listing(self, times: int | None = 1, kind: str = "xml") -> None:
        """Listings of format `kind` ("xml", "json" or "any") answer a cut-off body."""
        if kind not in ("xml", "json", "any"):
            raise ValueError(f"kind must be xml, json or any, not {kind!r}")
        self._add(_Rule("malformed_listing", "", times, fmt=kind))

    def clear(self) -> None:
        """Remove every rule and the too-deep limit; latency and `fired` stay."""
        with self._lock:
            self._rules.clear()
            self.too_deep_after_pid = None

    def pending(self, kind: str | None = None) -> int:
        """Rules still armed (of one kind, or all)."""
        with self._lock:
            return sum(1 for r in self._rules if kind is None or r.kind == kind)

    def take(self, kind: str, target: str, fmt: str | None = None) -> _Rule | None:
        """The first armed rule of `kind` matching `target`, counted as fired; None if none."""
        with self._lock:
            for rule in self._rules:
                if rule.kind != kind or rule.match not in target:
                    continue
                if fmt is not None and rule.fmt not in ("any", fmt):
                    continue
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                self.fired[kind] += 1
                return rule
        return None

    def note(self, kind: str) -> None:
        """Count a fault that has no rule object (too_deep)."""
        with self._lock:
            self.fired[kind] += 1

    def _add(self, rule: _Rule) -> None:
        if rule.times is not None and rule.times <= 0:
            return
        with self._lock:
            self._rules.append(rule)


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Index:
    """Lookup tables over one snapshot of `FakeBooru.posts`."""

    signature: tuple[Any, ...]
    ids: tuple[int, ...]  # id() of each post: the cheap check for image requests
    ordered: list[FakePost]  # id descending
    by_id: dict[int, FakePost]
    by_file: dict[tuple[str, str], FakePost]
    by_stem: dict[tuple[str, str], FakePost]
    tag_counts: Counter[str]
    known_lower: set[str]


class FakeBooru:
    """A Gelbooru 0.2 board on 127.0.0.1: DAPI post and tag listings, post pages, image files."""

    def __init__(
        self,
        posts: Iterable[FakePost] = (),
        *,
        tag_types: Mapping[str, int] | None = None,
        tag_api_hidden: Iterable[str] = (),
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # Copies, so module-level fixtures are not changed by a test that edits `booru.posts`.
        self.posts: list[FakePost] = list(posts)
        self.tag_types: dict[str, int] = dict(tag_types or {})
        self.tag_api_hidden: set[str] = set(tag_api_hidden)
        self.faults = Faults()
        self.faults.latency = latency
        self.requests: list[RequestLog] = []
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._log_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._index: _Index | None = None
        self._fragments: dict[int, tuple[tuple[Any, ...], str, str]] = {}
        self._tag_ids: dict[str, int] = {}

    # -- building ----------------------------------------------------------------------------------
    @classmethod
    def from_images(
        cls,
        paths: Iterable[Path],
        *,
        count: int | None = None,
        start_id: int = 1000,
        distinct: bool = False,
        tags_for: Callable[[int, Path], list[str]] | None = None,
    ) -> FakeBooru:
        """One post per file (or `count` posts cycling over the files), ids start_id, start_id+1, ...

        `tags_for(i, path)` gives the tags of the i-th post (0-based). With `distinct`, each post's bytes
        are made unique while staying a valid image; WebP files are skipped then.
        """
        files = [Path(p) for p in paths]
        if distinct:
            files = [p for p in files if p.suffix.lower() != ".webp"]
        if not files:
            raise ValueError("no image files to build posts from")
        total = len(files) if count is None else count
        cache: dict[Path, tuple[bytes, int, int]] = {}
        posts: list[FakePost] = []
        tag_types: dict[str, int] = {}
        for i in range(total):
            path = files[i % len(files)]
            if path not in cache:
                raw = path.read_bytes()
                cache[path] = (raw, *image_size(raw))
            raw, width, height = cache[path]
            post_id = start_id + i
            data = make_distinct(raw, post_id) if distinct else raw
            tags = list(tags_for(i, path)) if tags_for else default_tags(i)
            for tag in tags:
                tag_types.setdefault(tag, DEFAULT_TAG_TYPES.get(tag, GENERAL))
            ext = path.suffix.lower().lstrip(".") or "bin"
            posts.append(FakePost(post_id, data, ext, tags, width=width, height=height))
        return cls(posts, tag_types=tag_types)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FakeBooru:
        """Bind and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        server.booru = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fakebooru-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and drop open keep-alive connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeBooru:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT (only once started)."""
        if self._server is None:
            raise RuntimeError("FakeBooru is not running")
        return f"http://{self.host}:{self.port}"

    # -- helpers for tests -------------------------------------------------------------------------
    def file_url_for(self, post: FakePost) -> str:
        """The file_url the XML listing gives for a post."""
        return post.file_url or f"{self.url}/images/{post.id // 1000}/{post.md5}.{post.ext}"

    def post(self, post_id: int) -> FakePost:
        """The post with this id (KeyError if none)."""
        return self._current(strict=True).by_id[post_id]

    def requests_for(self, path_contains: str) -> list[RequestLog]:
        """Logged requests whose raw path+query contains the string."""
        with self._log_lock:
            return [r for r in self.requests if path_contains in r.raw]

    # -- routing -----------------------------------------------------------------------------------
    def _log(self, entry: RequestLog) -> None:
        with self._log_lock:
            self.requests.append(entry)

    def route(self, path: str, query: dict[str, str]) -> _Response:
        """The normal (fault-free) answer to a GET."""
        if path in ("/index.php", "/index.php/"):
            page, s, q = query.get("page"), query.get("s"), query.get("q")
            if page == "dapi" and s == "post" and q == "index":
                return self._listing(query)
            if page == "dapi" and s == "tag" and q == "index":
                return self._tag_api(query)
            if page == "post" and s == "view":
                return self._post_page(query.get("id", ""))
            return _not_found()
        parts = path.split("/")
        if len(parts) == 4 and parts[1] in ("images", "samples", "thumbnails"):
            return self._file(parts[1], parts[2], parts[3])
        return _not_found()

    def _current(self, *, strict: bool) -> _Index:
        """The index, rebuilt when posts were added, removed or (strict) edited."""
        posts = self.posts
        index = self._index
        full = tuple((id(p), p.id, p.md5, p.ext, tuple(p.tags)) for p in posts) if strict else None
        if index is not None and (index.signature == full if strict else index.ids == tuple(map(id, posts))):
            return index
        with self._index_lock:
            full = full or tuple((id(p), p.id, p.md5, p.ext, tuple(p.tags)) for p in posts)
            ordered = sorted(posts, key=lambda p: p.id, reverse=True)
            by_file: dict[tuple[str, str], FakePost] = {}
            by_stem: dict[tuple[str, str], FakePost] = {}
            counts: Counter[str] = Counter()
            for p in reversed(ordered):  # lowest id first, so it wins a shared md5
                by_file.setdefault((str(p.id // 1000), f"{p.md5}.{p.ext}"), p)
                by_stem.setdefault((str(p.id // 1000), p.md5), p)
                counts.update(set(p.tags))
            known = {t.lower() for t in counts} | {t.lower() for t in self.tag_types}
            self._index = _Index(
                full,
                tuple(map(id, posts)),
                ordered,
                {p.id: p for p in ordered},
                by_file,
                by_stem,
                counts,
                known,
            )
            return self._index

    def _file(self, kind: str, directory: str, name: str) -> _Response:
        if kind == "images":
            key, table = name, "file"
        else:
            prefix = "sample_" if kind == "samples" else "thumbnail_"
            if not (name.startswith(prefix) and name.endswith(".jpg")):
                return _not_found()
            key, table = name[len(prefix) : -len(".jpg")], "stem"
        for strict in (False, True):  # a miss may mean a post was edited in place; look again
            index = self._current(strict=strict)
            post = (index.by_file if table == "file" else index.by_stem).get((directory, key))
            if post is not None and (directory, key) == _file_key(post, table):
                return _Response(200, post.data, CONTENT_TYPES.get(post.ext, "application/octet-stream"))
        return _not_found()

    def _listing(self, query: dict[str, str]) -> _Response:
        fmt = "json" if query.get("json") == "1" else "xml"
        limit = max(0, min(_to_int(query.get("limit"), 100), 1000))
        pid = max(0, _to_int(query.get("pid"), 0))
        faults = self.faults
        deep = faults.too_deep_after_pid
        if deep is not None and pid > deep:
            faults.note("too_deep")
            if fmt == "json":
                return _json(json.dumps({"success": False, "message": TOO_DEEP}).encode())
            return _xml(f'{XML_HEAD}<response success="false" reason="{TOO_DEEP}"/>')
        if faults.take("malformed_listing", "", fmt):
            body = MALFORMED[fmt]
            return _Response(200, body, "application/json" if fmt == "json" else "text/xml; charset=utf-8")
        index = self._current(strict=True)
        matched = _search(index, query.get("tags", ""))
        offset = pid * limit
        page = matched[offset : offset + limit]
        if faults.take("empty_pages", "", fmt):
            page = []
        elif faults.take("short_pages", "", fmt):
            page = page[: len(page) // 2]
        frags = [self._fragments_for(p) for p in page]
        if fmt == "json":
            return _json(("[" + ",".join(f[1] for f in frags) + "]").encode())
        items = "".join(f[0] for f in frags)
        return _xml(f'{XML_HEAD}<posts count="{len(matched)}" offset="{offset}">{items}</posts>')

    def _fragments_for(self, p: FakePost) -> tuple[str, str]:
        """(XML element, JSON object) for a post, cached until the post changes."""
        file_url = self.file_url_for(p)
        key = (
            p.id,
            p.md5,
            p.ext,
            tuple(p.tags),
            p.rating,
            p.score,
            p.width,
            p.height,
            file_url,
            p.created_at,
        )
        cached = self._fragments.get(id(p))
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        frag = _post_xml(p, file_url, self.url), _post_json(p, self.url)
        self._fragments[id(p)] = (key, *frag)
        return frag

    def _tag_api(self, query: dict[str, str]) -> _Response:
        index = self._current(strict=True)
        if "names" in query:
            wanted = query["names"].split()
        elif "name" in query:
            wanted = [query["name"]]
        else:
            wanted = sorted(set(index.tag_counts) | set(self.tag_types))[: _to_int(query.get("limit"), 100)]
        rows: list[tuple[int, str, int, int]] = []
        for name in dict.fromkeys(wanted):
            if name in self.tag_api_hidden or (name not in self.tag_types and name not in index.tag_counts):
                continue
            rows.append(
                (self._tag_id(name), name, index.tag_counts.get(name, 0), self.tag_types.get(name, 0))
            )
        if query.get("json") == "1":
            objs = [
                {"id": i, "name": _php_escape(n), "count": c, "type": t, "ambiguous": False}
                for i, n, c, t in rows
            ]
            return _json(json.dumps(objs).encode())
        items = "".join(
            f'<tag type="{t}" count="{c}" name="{_xml_attr(_php_escape(n))}" ambiguous="false" id="{i}"/>'
            for i, n, c, t in rows
        )
        return _xml(f'{XML_HEAD}<tags type="array">{items}</tags>')

    def _tag_id(self, name: str) -> int:
        with self._index_lock:
            return self._tag_ids.setdefault(name, len(self._tag_ids) + 1)

    def _post_page(self, raw_id: str) -> _Response:
        index = self._current(strict=True)
        post = index.by_id.get(_to_int(raw_id, -1))
        if post is None:
            return _Response(404, _page("Not Found", "<h1>404</h1><p>That post does not exist.</p>").encode())
        groups: dict[int, list[str]] = {}
        for tag in sorted(set(post.tags)):
            kind = self.tag_types.get(tag, GENERAL)
            groups.setdefault(kind if kind in TYPE_CLASSES else GENERAL, []).append(tag)
        items: list[str] = []
        for kind, title in SIDEBAR_ORDER:
            if kind not in groups:
                continue
            items.append(f"<li><h6>{title}</h6></li>")
            for tag in groups[kind]:
                wiki = html.escape(f"index.php?page=wiki&s=list&search={quote_plus(tag)}")
                listing = html.escape(f"index.php?page=post&s=list&tags={quote_plus(tag)}")
                items.append(
                    f'<li class="tag-type-{TYPE_CLASSES[kind]} tag"><span class="sm-hidden">'
                    f'<a href="{wiki}">?</a></span> '
                    f'<a href="{listing}">{html.escape(tag.replace("_", " "))}</a>'
                    f' <span class="tag-count">{index.tag_counts.get(tag, 0)}</span></li>'
                )
        src = html.escape(self.file_url_for(post))
        alt = html.escape(" ".join(post.tags))
        rating = JSON_RATINGS.get(post.rating, post.rating).capitalize()
        body = (
            '<div id="header"><h2 id="site-title"><a href="index.php">Fakebooru</a></h2>'
            '<ul class="flat-list" id="navbar"><li><a href="index.php?page=account&amp;s=home">My Account</a>'
            '</li><li class="current-page">'
            '<a href="index.php?page=post&amp;s=list&amp;tags=all">Posts</a></li>'
            '<li><a href="index.php?page=tags&amp;s=list">Tags</a></li></ul>'
            '<ul class="flat-list" id="subnavbar"><li><a href="index.php?page=post&amp;s=list">List</a></li>'
            '<li><a href="index.php?page=post&amp;s=random">Random</a></li></ul></div>'
            '<div id="content"><div id="post-view"><div class="sidebar">'
            '<div class="space"><h5>Search</h5><form action="index.php?page=search" method="post">'
            '<input id="tags" name="tags" type="text" value=""/></form></div>'
            f'<div><h5>Tags</h5><ul id="tag-sidebar">{"".join(items)}</ul></div>'
            f'<div id="stats"><h5>Statistics</h5><ul><li>Id: {post.id}</li>'
            f"<li>Posted: {html.escape(post.created_at)}<br/>By: danbooru</li>"
            f"<li>Size: {post.width}x{post.height}</li><li>Source: </li>"
            f"<li>Rating: {html.escape(rating)}</li>"
            f'<li>Score: <span id="psc{post.id}">{post.score or 0}</span></li></ul></div>'
            f'<div><h5>Options</h5><ul><li><a href="{src}">Original image</a></li></ul></div></div>'
            f'<div class="content" id="right-col"><img alt="{alt}" id="image" src="{src}" '
            f'width="{post.width}" height="{post.height}"/></div></div></div>'
        )
        return _Response(200, _page(f"Fakebooru / {alt}", body).encode())


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers its connections so close() can end idle keep-alives."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    booru: FakeBooru

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, resets we provoked) are expected, not errors.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakebooru/1.0"
    # Headers and small bodies go out in one write; Nagle plus delayed ACKs would add 40 ms otherwise.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        server = cast(_Server, self.server)
        with server.connections_lock:
            server.connections.add(self.connection)

    def finish(self) -> None:
        server = cast(_Server, self.server)
        with server.connections_lock:
            server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `booru.requests` instead of a stderr line per request

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        booru = cast(_Server, self.server).booru
        faults = booru.faults
        raw = self.path
        parts = urlsplit(raw)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        entry = RequestLog(self.command, parts.path, query, raw, time.monotonic(), 0, dict(self.headers))
        booru._log(entry)
        if faults.latency > 0:
            time.sleep(faults.latency)
        rule = faults.take("slow", raw)
        if rule is not None:
            time.sleep(rule.seconds)
        if faults.take("reset", raw) is not None:
            self._reset()
            return
        if (rule := faults.take("rate_limit", raw)) is not None:
            headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else {}
            text = _PHRASES.get(rule.status, "Slow down")
            response = _Response(rule.status, text.encode(), "text/plain; charset=utf-8", headers)
        elif (rule := faults.take("status_for", raw)) is not None:
            response = _Response(rule.status, _page(str(rule.status), f"<h1>{rule.status}</h1>").encode())
        elif faults.take("html_as_image", raw) is not None:
            response = _Response(200, HTML_ERROR, "image/jpeg")
        else:
            try:
                response = booru.route(parts.path, query)
            except Exception:
                traceback.print_exc()
                response = _Response(500, traceback.format_exc().encode(), "text/plain; charset=utf-8")
        truncate = faults.take("truncate", raw) is not None
        entry.status = response.status
        self._send(response, head=head, truncate=truncate)

    def _send(self, response: _Response, *, head: bool, truncate: bool) -> None:
        body = response.body
        phrase = _PHRASES.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {self.date_time_string()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = b"" if head else (body[: len(body) // 2] if truncate else body)
        if len(payload) < 65536:
            self.wfile.write(head_bytes + payload)
        else:
            self.wfile.write(head_bytes)
            self.wfile.write(payload)
        if truncate:
            self.close_connection = True  # the server then closes the socket mid-body

    def _reset(self) -> None:
        """Close with SO_LINGER 0 so the client sees a reset, not a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The rfile holds a reference that would postpone the real close until finish().
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.connection.close()


_PHRASES = {s.value: s.phrase for s in http.HTTPStatus}


# -- rendering ---------------------------------------------------------------------------------------
def _post_xml(p: FakePost, file_url: str, base: str) -> str:
    a = _xml_attr
    tags = " " + " ".join(_php_escape(t) for t in p.tags) + " "
    score = "" if p.score is None else str(p.score)
    preview = f"{base}/thumbnails/{p.id // 1000}/thumbnail_{p.md5}.jpg"
    return (
        f'<post height="{p.height}" score="{score}" file_url="{a(file_url)}" parent_id="" '
        f'sample_url="{a(file_url)}" sample_width="{p.width}" sample_height="{p.height}" '
        f'preview_url="{a(preview)}" rating="{a(p.rating)}" tags="{a(tags)}" id="{p.id}" width="{p.width}" '
        f'change="{CHANGE}" md5="{a(p.md5)}" creator_id="1" has_children="false" '
        f'created_at="{a(p.created_at)}" '
        'status="active" source="" has_notes="false" has_comments="false" preview_width="150" '
        'preview_height="150"/>'
    )


def _post_json(p: FakePost, base: str) -> str:
    directory = str(p.id // 1000)
    obj = {
        "preview_url": f"{base}/thumbnails/{directory}/thumbnail_{p.md5}.jpg",
        "sample_url": f"{base}/images/{directory}/{p.md5}.{p.ext}",
        "directory": directory,
        "hash": p.md5,
        "height": p.height,
        "width": p.width,
        "id": p.id,
        "image": f"{p.md5}.{p.ext}",
        "change": CHANGE,
        "owner": "danbooru",
        "parent_id": 0,
        "rating": JSON_RATINGS.get(p.rating, p.rating),
        "sample": False,
        "sample_height": 0,
        "sample_width": 0,
        "score": p.score,
        "tags": " ".join(_php_escape(t) for t in p.tags),
        "source": "",
        "status": "active",
        "has_notes": False,
        "comment_count": 0,
    }
    return json.dumps(obj, separators=(",", ":"))


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"/><title>{html.escape(title)}</title>'
        '<link rel="stylesheet" href="screen.css" type="text/css"/></head>'
        f"<body>{body}</body></html>"
    )


def _php_escape(text: str) -> str:
    """PHP htmlspecialchars(ENT_QUOTES): how Gelbooru stores tags (`'` becomes &#039;)."""
    return html.escape(text, quote=True).replace("&#x27;", "&#039;")


def _xml_attr(text: str) -> str:
    return xml_escape(text, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def _xml(text: str) -> _Response:
    return _Response(200, text.encode(), "text/xml; charset=utf-8")


def _json(body: bytes) -> _Response:
    return _Response(200, body, "application/json")


def _not_found() -> _Response:
    return _Response(404, _page("Not Found", "<h1>404 Not Found</h1>").encode())


def _file_key(post: FakePost, table: str) -> tuple[str, str]:
    directory = str(post.id // 1000)
    return (directory, f"{post.md5}.{post.ext}") if table == "file" else (directory, post.md5)


def _to_int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


# -- search ------------------------------------------------------------------------------------------
def _search(index: _Index, tags: str) -> list[FakePost]:
    """Posts matching a Gelbooru tag query, in the order it asks for."""
    include: set[str] = set()
    exclude: set[str] = set()
    preds: list[tuple[Callable[[FakePost], bool], bool]] = []
    order = "id_desc"
    for raw in tags.split():
        negated = raw.startswith("-") and len(raw) > 1
        term = (raw[1:] if negated else raw).lower()
        if term.startswith("sort:"):
            spec = term[len("sort:") :]
            order = ("id_asc" if spec.endswith(":asc") else "id_desc") if spec.startswith("id") else "score"
            continue
        meta = _META.match(term)
        if meta and term not in index.known_lower:
            pred = _meta_predicate(meta.group(1), meta.group(2))
            if pred is not None:  # unknown metatags match everything
                preds.append((pred, negated))
            continue
        (exclude if negated else include).add(term)
    out: list[FakePost] = []
    for post in index.ordered:
        if include or exclude:
            have = {t.lower() for t in post.tags}
            if not include <= have or exclude & have:
                continue
        if any(pred(post) == negated for pred, negated in preds):
            continue
        out.append(post)
    if order == "score":
        out.sort(key=lambda p: (-(p.score or 0), -p.id))
    elif order == "id_asc":
        out.reverse()
    return out


def _meta_predicate(name: str, value: str) -> Callable[[FakePost], bool] | None:
    if name == "rating":
        letter = RATING_LETTERS.get(value)
        return None if letter is None else (lambda p: p.rating == letter)
    if name == "md5":
        return lambda p: p.md5 == value
    if name not in ("id", "score", "width", "height"):
        return None
    m = _NUMERIC.match(value)
    if m is None:
        return None
    op, n = m.group(1) or "=", int(m.group(2))

    def pred(p: FakePost) -> bool:
        v = getattr(p, name) or 0
        return {"<": v < n, ">": v > n, "<=": v <= n, ">=": v >= n, "=": v == n}[op]

    return pred


# -- images ------------------------------------------------------------------------------------------
def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG, GIF, JPEG or WebP header; (0, 0) when unknown."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return w, h
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
    except struct.error:
        pass
    return 0, 0


def _jpeg_size(data: bytes) -> tuple[int, int]:
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return 0, 0
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in sof:
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return 0, 0


def make_distinct(data: bytes, post_id: int) -> bytes:
    """The same image with the post id embedded, so every post has its own bytes and md5."""
    note = f"curate fakebooru post {post_id}".encode()
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        end = 8 + 12 + struct.unpack(">I", data[8:12])[0]  # signature, then IHDR length+type+data+crc
        payload = b"Comment\x00" + note
        chunk = (
            struct.pack(">I", len(payload))
            + b"tEXt"
            + payload
            + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
        )
        return data[:end] + chunk + data[end:]
    if data[:2] == b"\xff\xd8":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + data[2:]
    return data + b"\n" + note + b"\n"  # GIF and others tolerate bytes after the end


def default_tags(i: int) -> list[str]:
    """Tags of the i-th post built by from_images without tags_for."""
    return ["1girl", "solo", f"file_{i}", "artist_a", "series_b", "char_c", "highres"]


# -- fixtures ----------------------------------------------------------------------------------------
def fixture_dir() -> Path:
    """$CURATE_FIXTURES, else <repo>/../shared/fixtures."""
    env = os.environ.get("CURATE_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def image_files(kind: str | None = None) -> list[Path]:
    """Sorted fixture images: "faces", "noise", or both (None)."""
    kinds = [kind] if kind is not None else ["faces", "noise"]
    files: list[Path] = []
    for k in kinds:
        if k not in ("faces", "noise"):
            raise ValueError(f"kind must be faces, noise or None, not {k!r}")
        folder = fixture_dir() / "images" / k
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file())
    return files


# -- command line ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Serve fixture images for a benchmark until killed or until stdin (a pipe) closes."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakebooru", description=__doc__)
    parser.add_argument("--images", type=Path, default=None, help="folder of images (default: fixture faces)")
    parser.add_argument("--posts", type=int, default=None, help="number of posts (default: one per file)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    parser.add_argument("--distinct", action="store_true", help="make every post's bytes unique")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--start-id", type=int, default=1000)
    args = parser.parse_args(argv)
    folder = args.images or fixture_dir() / "images" / "faces"
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    booru = FakeBooru.from_images(paths, count=args.posts, start_id=args.start_id, distinct=args.distinct)
    booru.faults.latency = args.latency
    booru.port = args.port
    with booru:
        print(f"READY {booru.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            _wait_for_stdin_or_signal()
    return 0


def _wait_for_stdin_or_signal() -> None:
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        mode = 0
    # Only a pipe or socket can "close"; /dev/null or a terminal would end the server at once or never.
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        while os.read(0, 65536):
            pass
    else:
        threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
