"""Polite HTTP: one token bucket shared by all threads, retries with backoff and Retry-After, host allow-list.

We keep our own retry loop instead of urllib3's `Retry` because a retry here must also take a token from
the shared rate limiter, push every thread back on a 429, and cover failures found while reading the body
(a truncated image), which urllib3 only sees as the headers arrive.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from curate import USER_AGENT

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


class FetchError(Exception):
    """A request that did not give what was asked; `code` is the manifest's stable error code."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class RateLimiter:
    """Token bucket: `rate` requests per second on average, at most `burst` back to back; 0 is unlimited.

    A caller reserves its slot under the lock and sleeps outside it, so threads are served in turn.
    """

    def __init__(self, rate: float, burst: int = 1):
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until it is there; returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
        return wait

    def hold_off(self, seconds: float) -> None:
        """The server asked us to slow down: nobody sends for `seconds` (rate-limited buckets only)."""
        if self.rate <= 0 or seconds <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._tokens + (now - self._stamp) * self.rate, 0.0) - seconds * self.rate
            self._stamp = now


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts in all, backoff doubling from `backoff` with jitter, caps on waits."""

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter keeps threads from retrying in step


class HttpClient:
    """A requests session for one board: rate limit, timeouts, retries, and only the board's own hosts."""

    def __init__(
        self,
        base_url: str,
        *,
        rate: float = 2.0,
        pool_size: int = 16,
        timeout: tuple[float, float] = (10.0, 30.0),
        retry: RetryPolicy | None = None,
        allow_hosts: Iterable[str] = (),
        user_agent: str = USER_AGENT,
    ):
        host = urlsplit(base_url).hostname or ""
        self.allowed_hosts = {_strip_www(host), *(h.lower() for h in allow_hosts)}
        self.limiter = RateLimiter(rate)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent
        # requests re-reads proxy and CA variables on every request, a large share of its CPU per image;
        # read them once for the board's URL instead.
        self.session.trust_env = False
        self.session.proxies.update(requests.utils.get_environ_proxies(base_url))
        self.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.retries = 0  # requests sent again; read by the progress summary
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    def check_url(self, url: str) -> None:
        """Refuse anything but http(s) on the board's hosts, before a single byte is sent."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise FetchError("bad_url", f"refusing non-http URL {url[:200]!r}")
        host = (parts.hostname or "").lower()
        if not any(host == h or host.endswith("." + h) for h in self.allowed_hosts):
            raise FetchError(
                "foreign_host", f"refusing URL on foreign host {host!r} (allowed: {self._hosts()})"
            )

    def call(
        self,
        url: str,
        consume: Callable[[requests.Response], T],
        *,
        params: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> T:
        """GET `url` and return `consume(response)`, retrying what may pass; raises FetchError otherwise.

        `consume` may raise a retryable FetchError itself (a body cut short) to have the request sent again.
        """
        self.check_url(url)
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return self._attempt(url, consume, params, stream)
            except FetchError as err:
                failure = err
            except requests.Timeout as err:
                failure = FetchError("timeout", f"timed out: {err}", retryable=True)
            except requests.exceptions.ChunkedEncodingError as err:
                failure = FetchError("truncated", f"body cut short: {err}", retryable=True)
            except requests.ConnectionError as err:
                code = "timeout" if "timed out" in str(err).lower() else "connection_error"
                failure = FetchError(code, f"connection failed: {err}", retryable=True)
            if not failure.retryable or attempt == self.retry.attempts:
                if failure.retryable:
                    failure.message += f" (gave up after {attempt} attempts)"
                raise failure
            wait = self.retry.wait(attempt, failure.retry_after)
            if failure.code == "http_429":
                self.limiter.hold_off(wait)
            with self._count_lock:
                self.retries += 1
            log.debug("retrying %s in %.2fs after %s", url, wait, failure.code)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def get_text(self, url: str, params: Mapping[str, Any] | None = None) -> bytes:
        """The whole body of a small page (listing, tag API, post page)."""
        return self.call(url, lambda r: r.content, params=params)

    def _attempt(
        self,
        url: str,
        consume: Callable[[requests.Response], T],
        params: Mapping[str, Any] | None,
        stream: bool,
    ) -> T:
        # Redirects are followed by hand so every hop is checked against the allowed hosts.
        for _ in range(MAX_REDIRECTS + 1):
            self.limiter.acquire()
            response = self.session.get(
                url, params=params, stream=stream, timeout=self.timeout, allow_redirects=False
            )
            with response:
                status = response.status_code
                if status in REDIRECT_STATUSES and response.headers.get("Location"):
                    url, params = urljoin(url, response.headers["Location"]), None
                    self.check_url(url)
                    continue
                if status in RETRY_STATUSES:
                    raise FetchError(
                        f"http_{status}",
                        f"HTTP {status} {response.reason} from {url}",
                        retryable=True,
                        retry_after=parse_retry_after(response.headers.get("Retry-After")),
                    )
                if status >= 400:
                    raise FetchError(f"http_{status}", f"HTTP {status} {response.reason} from {url}")
                return consume(response)
        raise FetchError("too_many_redirects", f"more than {MAX_REDIRECTS} redirects from {url}")

    def _hosts(self) -> str:
        return ", ".join(sorted(self.allowed_hosts))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _strip_www(host: str) -> str:
    host = host.lower()
    return host[4:] if host.startswith("www.") else host
