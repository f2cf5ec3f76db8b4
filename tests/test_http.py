"""The shared rate limiter, Retry-After parsing, and the host allow-list."""

from __future__ import annotations

import itertools
import threading
import time
from email.utils import formatdate

import pytest

from crawl.http import FetchError, HttpClient, RateLimiter, RetryPolicy, parse_retry_after


def test_token_bucket_spaces_requests_from_many_threads():
    limiter = RateLimiter(rate=20.0)  # one request every 50 ms, shared
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(3):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 12
    # 12 tokens at 20/s with a burst of one: the last cannot come before 11 intervals have passed.
    assert stamps[-1] - start >= 11 / 20 - 0.02
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) > 0.03


def test_unlimited_rate_never_waits():
    limiter = RateLimiter(rate=0)
    start = time.monotonic()
    for _ in range(1000):
        assert limiter.acquire() == 0.0
    assert time.monotonic() - start < 0.5


def test_hold_off_pushes_the_next_request_back():
    limiter = RateLimiter(rate=100.0)
    limiter.acquire()
    limiter.hold_off(0.3)
    start = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - start >= 0.28


def test_retry_after_seconds_and_http_dates():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 28 <= later <= 31


def test_backoff_doubles_with_jitter_and_respects_caps():
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0, max_retry_after=10.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        waits = [policy.wait(attempt, None) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
    assert policy.wait(1, 3.0) == 3.0
    assert policy.wait(1, 500.0) == 10.0


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "bad_url"),
        ("ftp://safebooru.org/x.png", "bad_url"),
        ("https://evil.example/x.png", "foreign_host"),
        ("https://safebooru.org.evil.example/x.png", "foreign_host"),
        ("https://notsafebooru.org/x.png", "foreign_host"),
    ],
)
def test_only_http_on_the_boards_own_hosts(url, code):
    client = HttpClient("https://www.safebooru.org", rate=0)
    with pytest.raises(FetchError) as caught:
        client.check_url(url)
    assert caught.value.code == code


def test_board_host_and_its_subdomains_are_allowed():
    client = HttpClient("https://safebooru.org", rate=0, allow_hosts=["cdn.mirror.example"])
    for url in (
        "https://safebooru.org//images/1/a.jpg",
        "https://img.safebooru.org/a.png",
        "http://cdn.mirror.example/a.png",
    ):
        client.check_url(url)
    assert client.session.headers["User-Agent"].startswith("curate/")
