"""Each fault the loopback board can inject, and the crawl's answer to it."""

from __future__ import annotations

import pytest

from crawl.board import crawl_board
from crawl.http import RetryPolicy
from curate.errors import SourceError
from curate.manifest import CRAWL, read_stage
from tests.conftest import options_for


def row_of(ws, post) -> dict:
    rows = {r["post_id"]: r for r in read_stage(ws, CRAWL).to_pylist()}
    return rows[f"127.0.0.1:{post.id}"]


def attempts_at(booru, post) -> list:
    return booru.requests_for(post.md5)


@pytest.fixture
def victim(booru):
    """A healthy post near the top of the listing, for faults aimed at one image."""
    return booru.posts[-3]


def crawl(booru, ws, **overrides):
    return crawl_board(ws.root, options_for(booru, **overrides), progress=False)


def test_429_with_retry_after_is_waited_out_then_fetched(booru, ws, victim):
    booru.faults.rate_limit(victim.md5, times=1, status=429, retry_after="1")
    report = crawl(booru, ws, limit=10)
    tries = attempts_at(booru, victim)
    assert [t.status for t in tries] == [429, 200]
    assert tries[1].time - tries[0].time >= 0.95  # Retry-After honoured, not the 10 ms backoff
    assert row_of(ws, victim)["status"] == "ok"
    assert report.retries == 1


def test_503_is_retried_with_backoff_and_gives_up_at_the_cap(booru, ws, victim):
    other = booru.posts[-5]
    booru.faults.rate_limit(victim.md5, times=2, status=503, retry_after=None)
    booru.faults.status_for(other.md5, 503)  # forever
    crawl(booru, ws, limit=10)
    assert [t.status for t in attempts_at(booru, victim)] == [503, 503, 200]
    assert row_of(ws, victim)["status"] == "ok"
    failed = row_of(ws, other)
    assert (failed["status"], failed["error"]) == ("failed", "http_503")
    assert "gave up after 3 attempts" in failed["message"]
    assert len(attempts_at(booru, other)) == 3


def test_404_fails_at_once_without_retrying(booru, ws, victim):
    booru.faults.status_for(victim.md5, 404)
    crawl(booru, ws, limit=10)
    assert (row_of(ws, victim)["status"], row_of(ws, victim)["error"]) == ("failed", "http_404")
    assert len(attempts_at(booru, victim)) == 1


@pytest.mark.parametrize(("fault", "code"), [("reset", "connection_error"), ("truncate", "truncated")])
def test_broken_transfers_are_retried_and_never_stored_half(booru, ws, victim, fault, code):
    other = booru.posts[-5]
    getattr(booru.faults, fault)(victim.md5, times=1)
    getattr(booru.faults, fault)(other.md5, times=None)
    crawl(booru, ws, limit=10)
    assert row_of(ws, victim)["status"] == "ok"
    assert len(attempts_at(booru, victim)) == 2
    assert (row_of(ws, other)["status"], row_of(ws, other)["error"]) == ("failed", code)
    assert not list(ws.images.rglob(f"{other.md5}*"))
    assert not [p for p in ws.tmp.rglob("*") if p.is_file()]


def test_wrong_md5_from_the_api_fails_and_stores_nothing(booru, ws, victim):
    real = victim.md5
    victim.md5 = "0" * 32
    crawl(booru, ws, limit=10)
    row = row_of(ws, victim)
    assert (row["status"], row["error"]) == ("failed", "md5_mismatch")
    assert real in row["message"] and row["image_id"] is None
    assert not list(ws.images.rglob(f"{real}*"))


def test_html_page_served_as_image_is_not_an_image(booru, ws, victim):
    booru.faults.html_as_image(victim.md5)
    crawl(booru, ws, limit=10)
    row = row_of(ws, victim)
    assert (row["status"], row["error"]) == ("failed", "not_image")
    assert "html" in row["message"].lower()
    assert not list(ws.images.rglob(f"{victim.md5}*"))


def test_answers_slower_than_the_timeout_time_out_and_are_retried(booru, ws, victim):
    other = booru.posts[-5]
    booru.faults.slow(victim.md5, seconds=1.5, times=1)
    booru.faults.slow(other.md5, seconds=1.5, times=None)
    crawl(booru, ws, limit=10, timeout=(0.5, 0.5), retry=RetryPolicy(attempts=2, backoff=0.01))
    assert row_of(ws, victim)["status"] == "ok"
    assert (row_of(ws, other)["status"], row_of(ws, other)["error"]) == ("failed", "timeout")


def test_flaky_empty_and_short_pages_are_asked_again(booru, ws):
    booru.faults.empty_pages(times=2)
    booru.faults.short_pages(times=1)
    report = crawl(booru, ws, limit=1000)
    assert booru.faults.fired["empty_pages"] == 2 and booru.faults.fired["short_pages"] == 1
    assert report.written == len(booru.posts) == read_stage(ws, CRAWL).num_rows


def test_short_pages_midway_are_repaired_by_asking_again(booru, ws):
    from crawl.gelbooru import GelbooruClient
    from crawl.http import HttpClient

    client = GelbooruClient(HttpClient(booru.url, rate=0, retry=RetryPolicy(backoff=0.01)), booru.url)
    pages = client.iter_pages(["1girl"], page_size=40)
    first = next(pages)
    booru.faults.short_pages(times=2)
    rest = list(pages)
    ids = [p.id for page in [first, *rest] for p in page.posts]
    assert ids == sorted((p.id for p in booru.posts), reverse=True)


def test_malformed_listing_once_is_retried(booru, ws):
    booru.faults.malformed_listing(times=1, kind="xml")
    report = crawl(booru, ws, limit=20)
    assert report.written == 20


def test_malformed_listing_for_good_stops_with_a_clear_error_keeping_what_was_done(booru, ws):
    from crawl.gelbooru import GelbooruClient
    from crawl.http import HttpClient

    crawl(booru, ws, limit=5)
    booru.faults.malformed_listing(times=None, kind="json")
    with pytest.raises(SourceError, match="unparsable post lists"):
        crawl(booru, ws, limit=50, api_format="json")
    assert read_stage(ws, CRAWL).num_rows == 5
    client = GelbooruClient(HttpClient(booru.url, rate=0), booru.url, api_format="json")
    with pytest.raises(SourceError):
        client._fetch_steady(["1girl"], 10, 0, flake_retries=0)


def test_foreign_host_and_file_scheme_urls_fail_without_a_request(booru, ws):
    from tests.fakebooru import FakeBooru

    foreign, local = booru.posts[-2], booru.posts[-4]
    with FakeBooru(host="127.0.0.2") as elsewhere:
        foreign.file_url = f"{elsewhere.url}/images/1/{foreign.md5}.{foreign.ext}"
        local.file_url = "file:///etc/passwd"
        crawl(booru, ws, limit=10)
        assert elsewhere.requests == []
    assert (row_of(ws, foreign)["status"], row_of(ws, foreign)["error"]) == ("failed", "foreign_host")
    assert (row_of(ws, local)["status"], row_of(ws, local)["error"]) == ("failed", "bad_url")
    assert not attempts_at(booru, foreign) and not attempts_at(booru, local)


def test_retry_failed_fetches_only_the_failures(booru, ws, victim):
    booru.faults.status_for(victim.md5, 500)
    first = crawl(booru, ws, limit=10)
    assert first.outcomes[("failed", "http_500")] == 1
    booru.faults.clear()
    booru.requests.clear()
    assert crawl(booru, ws, limit=10).up_to_date
    again = crawl(booru, ws, limit=10, retry_failed=True)
    assert again.written == 1 and again.already_done == 9
    assert row_of(ws, victim)["status"] == "ok"
    assert [r.path for r in booru.requests if r.path.startswith("/images/")] == [
        f"/images/{victim.id // 1000}/{victim.md5}.{victim.ext}"
    ]
    assert read_stage(ws, CRAWL).num_rows == 10


def test_a_malformed_post_record_gets_a_failed_row_and_the_rest_go_on(booru, ws, monkeypatch):
    from crawl.gelbooru import GelbooruClient

    broken = booru.posts[-2]
    normalise = GelbooruClient.normalise

    def garble(self, record):
        if str(record.get("id")) == str(broken.id):
            raise ValueError("width is not a number")  # as a board with a bug might send it
        return normalise(self, record)

    monkeypatch.setattr(GelbooruClient, "normalise", garble)
    report = crawl(booru, ws, limit=10)
    rows = {r["post_id"]: r for r in read_stage(ws, CRAWL).to_pylist()}
    bad = rows[f"127.0.0.1:{broken.id}"]
    assert (bad["status"], bad["error"]) == ("failed", "bad_record")
    assert "malformed post record" in bad["message"]
    assert report.outcomes[("ok", None)] == 10


def test_files_over_the_size_cap_fail_as_too_large(booru, ws):
    from crawl.download import Limits

    report = crawl(booru, ws, limit=10, limits=Limits(max_bytes=100_000))
    rows = read_stage(ws, CRAWL).to_pylist()
    big = [r for r in rows if r["error"] == "too_large"]
    assert big and report.outcomes[("failed", "too_large")] == len(big)
    sizes = {f"127.0.0.1:{p.id}": len(p.data) for p in booru.posts}
    assert all(sizes[r["post_id"]] > 100_000 for r in big)
    assert all(sizes[r["post_id"]] <= 100_000 for r in rows if r["status"] == "ok")
    assert "limit is 100,000" in big[0]["message"]


def test_a_listing_that_breaks_midway_keeps_the_first_pages_and_says_so(booru, ws, monkeypatch):
    from crawl.gelbooru import GelbooruClient

    pages = GelbooruClient.iter_pages

    def one_page_then_garbage(self, terms, page_size, **kwargs):
        for number, page in enumerate(pages(self, terms, 20, **kwargs)):
            if number == 1:
                raise SourceError("127.0.0.1 kept sending unparsable post lists")
            yield page

    monkeypatch.setattr(GelbooruClient, "iter_pages", one_page_then_garbage)
    with pytest.raises(SourceError, match=r"20 posts finished before that are saved; run again to resume"):
        crawl(booru, ws, limit=100)
    assert read_stage(ws, CRAWL).num_rows == 20
    monkeypatch.setattr(GelbooruClient, "iter_pages", pages)
    resumed = crawl(booru, ws, limit=100)
    assert resumed.already_done == 20 and resumed.written == 80
