"""Gelbooru 0.2 DAPI client (Safebooru runs it): post listings in XML or JSON, tag types, post-page sidebars.

Both listing formats are normalised into one `Post`. Paging is by keyset (`id:<LAST_ID`, `pid=0`) because
the engine refuses deep `pid` offsets ("Too deep! Pull it back some."); only a query with its own `sort:`
order, which keyset cannot follow, pages by `pid` and stops at the engine's depth limit.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

from crawl.http import FetchError, HttpClient
from curate.errors import SourceError

log = logging.getLogger(__name__)

SAFEBOORU_URL = "https://safebooru.org"
MAX_PAGE_SIZE = 1000
TAG_BATCH = 100  # names per tag-API request, keeping URLs short

# Gelbooru 0.2 tag type numbers; anything else (deprecated, unused) counts as general.
TAG_TYPES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "metadata"}
SIDEBAR_CLASSES = {
    "general": "general",
    "artist": "artist",
    "copyright": "copyright",
    "character": "character",
    "metadata": "metadata",
    "meta": "metadata",
}
RATINGS = {
    "s": "general",
    "safe": "general",
    "g": "general",
    "general": "general",
    "sensitive": "sensitive",
    "q": "questionable",
    "questionable": "questionable",
    "e": "explicit",
    "explicit": "explicit",
}
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Post:
    """One post, whichever format it came in."""

    source: str
    id: int
    md5: str | None
    file_url: str | None
    sample_url: str | None
    width: int | None
    height: int | None
    rating: str | None
    score: int | None
    tags: list[str]
    created_at: str | None

    @property
    def post_id(self) -> str:
        return f"{self.source}:{self.id}"


@dataclass
class BadRecord:
    """A listing entry we could not understand; it still gets a `failed` row."""

    source_id: str
    message: str


@dataclass
class Page:
    posts: list[Post] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    count: int | None = None  # posts matching the request, from XML `count` (JSON has no total)

    def __len__(self) -> int:
        return len(self.posts) + len(self.bad)


class TooDeep(SourceError):
    """The engine refused a page offset as too deep."""


class Unparsable(SourceError):
    """The listing body was neither the XML nor the JSON the engine sends."""


class GelbooruClient:
    """Reads one Gelbooru-0.2 instance through an HttpClient."""

    def __init__(
        self,
        http: HttpClient,
        base_url: str = SAFEBOORU_URL,
        *,
        api_format: str = "xml",
        api_key: str | None = None,
        user_id: str | None = None,
    ):
        self.http = http
        # Boards that ask for credentials (Gelbooru itself) take them on every API call; never recorded.
        self.credentials = {"api_key": api_key, "user_id": user_id} if api_key and user_id else {}
        self.base_url = base_url.rstrip("/")
        self.api_url = f"{self.base_url}/index.php"
        self.api_format = api_format
        self.source = source_name(self.base_url)

    # -- listing ---------------------------------------------------------------------------------
    def fetch_page(self, terms: list[str], limit: int, pid: int = 0) -> Page:
        """One listing page; raises TooDeep, Unparsable, or FetchError."""
        params = {
            "page": "dapi",
            "s": "post",
            "q": "index",
            "tags": " ".join(terms),
            "limit": limit,
            "pid": pid,
            **self.credentials,
        }
        if self.api_format == "json":
            params["json"] = 1
        body = self.http.get_text(self.api_url, params)
        return self._parse_json(body) if self.api_format == "json" else self._parse_xml(body)

    def iter_pages(self, terms: list[str], page_size: int, *, flake_retries: int = 3) -> Iterator[Page]:
        """Every page of the query, newest first; short or empty pages before the total are retried."""
        page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        if any(t.startswith("sort:") and t not in ("sort:id", "sort:id:desc") for t in terms):
            yield from self._iter_by_offset(terms, page_size, flake_retries)
            return
        last_id: int | None = None
        retries = flake_retries
        while True:
            page_terms = [*terms, f"id:<{last_id}"] if last_id is not None else terms
            page = self._fetch_steady(page_terms, page_size, 0, retries)
            if len(page):
                yield page
            if not page.posts:
                return  # the end, or only records without a usable id to page past
            last_id = min(p.id for p in page.posts)
            retries = flake_retries
            if page.count is not None:
                if page.count <= len(page):
                    return
            elif len(page) < page_size:
                retries = 1  # JSON has no total: a short page is likely the last; one more look confirms

    def _iter_by_offset(self, terms: list[str], page_size: int, flake_retries: int) -> Iterator[Page]:
        pid = 0
        while True:
            try:
                page = self._fetch_steady(terms, page_size, pid, flake_retries)
            except TooDeep:
                log.warning("%s stops paging a sort: query at page %d (engine depth limit)", self.source, pid)
                return
            if len(page):
                yield page
            if len(page) < page_size:
                return
            pid += 1

    def _fetch_steady(self, terms: list[str], page_size: int, pid: int, flake_retries: int) -> Page:
        """Fetch a page, asking again while it looks like a flake (short, empty or unparsable)."""
        best = Page()
        for attempt in range(1, flake_retries + 2):
            try:
                page = self.fetch_page(terms, page_size, pid)
            except Unparsable as err:
                if attempt > flake_retries:
                    raise SourceError(f"{self.source} kept sending unparsable post lists: {err}") from err
                log.warning("unparsable listing (%s); asking again", err)
            except FetchError as err:
                raise SourceError(f"{self.source} listing failed: {err.message}") from err
            else:
                best = page if len(page) >= len(best) else best
                if not _looks_short(page, page_size) or attempt > flake_retries:
                    break
                log.info("listing page has %d of %s posts; asking again", len(page), page.count)
            time.sleep(self.http.retry.wait(attempt, None))
        if len(best) == 0 and best.count:
            log.warning(
                "%s reports %d more posts but keeps sending empty pages; stopping", self.source, best.count
            )
        return best

    def _parse_xml(self, body: bytes) -> Page:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as err:
            raise Unparsable(f"bad XML ({err}): {_excerpt(body)}") from err
        if root.tag == "response":
            _raise_refusal(root.get("reason") or root.get("message") or _excerpt(body))
        if root.tag != "posts":
            raise Unparsable(f"expected <posts>, got <{root.tag}>: {_excerpt(body)}")
        page = Page(count=_int(root.get("count")))
        for element in root.iter("post"):
            self._add_record(page, dict(element.attrib))
        return page

    def _parse_json(self, body: bytes) -> Page:
        if not body.strip():
            return Page()  # the engine answers an empty body for an empty result
        try:
            data = json.loads(body)
        except ValueError as err:
            raise Unparsable(f"bad JSON ({err}): {_excerpt(body)}") from err
        if isinstance(data, dict):
            if data.get("success") is False or "message" in data or "reason" in data:
                _raise_refusal(str(data.get("message") or data.get("reason")))
            data = data.get("post", [])  # Gelbooru 0.2.5 wraps posts in an object
        if not isinstance(data, list):
            raise Unparsable(f"expected a JSON array of posts: {_excerpt(body)}")
        page = Page()
        for record in data:
            if isinstance(record, dict):
                self._add_record(page, record)
            else:
                page.bad.append(BadRecord("?", f"listing entry is not an object: {str(record)[:100]}"))
        return page

    def _add_record(self, page: Page, record: dict) -> None:
        try:
            page.posts.append(self.normalise(record))
        except (KeyError, TypeError, ValueError) as err:
            page.bad.append(BadRecord(str(record.get("id", "?"))[:40], f"malformed post record: {err}"))

    def normalise(self, record: dict) -> Post:
        """One Post from an XML attribute dict or a JSON object (raises on a record with no usable id)."""
        post_id = int(str(record["id"]).strip())
        md5 = str(record.get("md5") or record.get("hash") or "").strip().lower()
        directory, image = record.get("directory"), record.get("image")
        file_url = record.get("file_url") or None
        if not file_url and directory is not None and image:
            file_url = f"{self.base_url}/images/{directory}/{image}"
        sample_url = record.get("sample_url") or None
        if not sample_url and _truthy(record.get("sample")) and directory is not None and image:
            sample_url = f"{self.base_url}/samples/{directory}/sample_{str(image).rsplit('.', 1)[0]}.jpg"
        rating = str(record.get("rating") or "").strip().lower()
        return Post(
            source=self.source,
            id=post_id,
            md5=md5 if _MD5.match(md5) else None,
            file_url=self._absolute(file_url),
            sample_url=self._absolute(sample_url),
            width=_int(record.get("width")),
            height=_int(record.get("height")),
            rating=RATINGS.get(rating, rating or None),
            score=_int(record.get("score")),
            tags=[html.unescape(t) for t in str(record.get("tags") or "").split()],
            created_at=str(record["created_at"]) if record.get("created_at") else None,
        )

    def _absolute(self, url: object) -> str | None:
        if not url:
            return None
        url = str(url).strip()
        return urljoin(self.base_url + "/", url) if not urlsplit(url).scheme else url

    # -- tag categories --------------------------------------------------------------------------
    def tag_types(self, names: Iterable[str]) -> dict[str, str]:
        """Categories from the tag API for up to TAG_BATCH names (names it does not know are left out)."""
        wanted = list(names)
        params = {"page": "dapi", "s": "tag", "q": "index", "names": " ".join(wanted), "limit": len(wanted)}
        params.update(self.credentials)
        body = self.http.get_text(self.api_url, params)
        try:
            root = ET.fromstring(body)
        except ET.ParseError as err:
            raise Unparsable(f"bad tag API XML ({err}): {_excerpt(body)}") from err
        asked = set(wanted)
        found = {}
        for element in root.iter("tag"):
            name = html.unescape(element.get("name") or "")
            if name in asked:
                found[name] = TAG_TYPES.get(_int(element.get("type")) or 0, "general")
        return found

    def post_page_categories(self, post_id: int) -> dict[str, str]:
        """Categories of a post's tags, from the tag list of its HTML page."""
        return parse_tag_sidebar(
            self.http.get_text(self.api_url, {"page": "post", "s": "view", "id": post_id})
        )


def parse_tag_sidebar(page: bytes | str) -> dict[str, str]:
    """`{tag: category}` from a post page's tag list: `<ul id="tag-sidebar">` on Safebooru, `<ul class=
    "tag-list">` on some other Gelbooru 0.2 boards, each `<li class="tag-type-KIND">` linking `tags=NAME`."""
    from bs4 import BeautifulSoup  # only needed when the tag API leaves tags unknown

    soup = BeautifulSoup(page, "html.parser")
    lists = soup.find_all("ul", id=re.compile(r"^tag-")) or soup.find_all("ul", class_=re.compile(r"^tag-"))
    found: dict[str, str] = {}
    for item in (li for ul in lists for li in ul.find_all("li")):
        kinds = [c[len("tag-type-") :] for c in item.get("class", []) if c.startswith("tag-type-")]
        if not kinds:
            continue
        for link in item.find_all("a", href=True):
            names = parse_qs(urlsplit(link["href"]).query).get("tags")
            if names and "s=list" in link["href"]:
                found[names[0]] = SIDEBAR_CLASSES.get(kinds[0], "general")
                break
    return found


def source_name(base_url: str) -> str:
    """A short name for a board from its URL: safebooru.org -> safebooru; an IP address stays as it is."""
    host = (urlsplit(base_url).hostname or base_url).lower()
    host = host[4:] if host.startswith("www.") else host
    if re.fullmatch(r"[\d.]+|[0-9a-f:]+", host) or "." not in host:
        return host
    return host.split(".")[0]


def _looks_short(page: Page, page_size: int) -> bool:
    """Fewer posts than the total says are left (XML), or none at all (JSON, which has no total)."""
    if page.count is None:
        return len(page) == 0
    return len(page) < min(page_size, page.count)


def _raise_refusal(reason: str) -> None:
    if "too deep" in reason.lower():
        raise TooDeep(reason)
    raise Unparsable(f"the engine refused the request: {reason}")


def _int(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true")


def _excerpt(body: bytes) -> str:
    return body[:120].decode("utf-8", "replace").replace("\n", " ")
