"""Crawling the loopback Safebooru: every fixture, both listing formats, categories, resume and extension."""

from __future__ import annotations

import hashlib

import pytest

from crawl.board import crawl_board
from curate.manifest import CRAWL, TAG_CATEGORIES, read_stage
from tests.conftest import CORRUPT, options_for


def rows_by_id(ws) -> dict[str, dict]:
    return {row["post_id"]: row for row in read_stage(ws, CRAWL).to_pylist()}


def image_requests(booru) -> list:
    return [r for r in booru.requests if r.path.startswith("/images/")]


@pytest.mark.parametrize("api", ["xml", "json"])
def test_every_fixture_is_crawled_checked_and_stored(booru, ws, api, face_images, noise_images):
    report = crawl_board(ws.root, options_for(booru, api_format=api), progress=False)
    rows = rows_by_id(ws)
    assert report.listed == len(rows) == len(booru.posts) == len(face_images) + len(noise_images)
    assert report.exhausted
    names = {post.id: name for post, name in zip(booru.posts, face_images + noise_images, strict=True)}
    for post in booru.posts:
        row = rows[f"127.0.0.1:{post.id}"]
        if names[post.id].name in CORRUPT:
            assert (row["status"], row["error"]) == ("failed", "decode_error"), names[post.id]
            assert row["path"] is None
            continue
        assert (row["status"], row["error"]) == ("ok", None), (names[post.id], row["message"])
        stored = ws.root / row["path"]
        assert hashlib.md5(stored.read_bytes()).hexdigest() == row["image_id"] == post.md5
        assert row["path"] == f"images/{post.md5[:2]}/{post.md5}.{stored.suffix[1:]}"
        assert row["width"] > 0 and row["bytes"] == len(post.data)
        assert row["tags"] == post.tags
        assert row["rating"] == "general"
    assert not list(ws.tmp.rglob("*.*")), "scratch files left behind"


def test_xml_and_json_crawls_agree(booru, tmp_path):
    from curate.workspace import Workspace

    results = []
    for api in ("xml", "json"):
        ws = Workspace.open(tmp_path / api)
        crawl_board(ws.root, options_for(booru, api_format=api, limit=60), progress=False)
        table = read_stage(ws, CRAWL).sort_by("post_id")
        results.append(table.select(["post_id", "status", "error", "image_id", "tags", "rating"]).to_pylist())
    assert results[0] == results[1]
    assert len(results[0]) == 60


def test_tags_are_grouped_by_category_and_each_looked_up_once(booru, ws):
    crawl_board(ws.root, options_for(booru, limit=30), progress=False)
    row = rows_by_id(ws)[f"127.0.0.1:{booru.posts[-1].id}"]
    assert row["tags_artist"] == ["artist_a"]
    assert row["tags_copyright"] == ["series_b"]
    assert row["tags_character"] == ["char_c"]
    assert row["tags_metadata"] == ["highres"]  # from the post page: the tag API does not know it
    assert set(row["tags_general"]) == {"1girl", "solo", f"file_{len(booru.posts) - 1}"}
    categories = {r["tag"]: (r["category"], r["source"]) for r in read_stage(ws, TAG_CATEGORIES).to_pylist()}
    assert categories["highres"] == ("metadata", "post_page")
    assert categories["char_c"] == ("character", "tag_api")
    sidebar_requests = len(booru.requests_for("s=view"))
    assert sidebar_requests == 1

    before = len(booru.requests_for("s=tag")) + sidebar_requests
    crawl_board(ws.root, options_for(booru, tags="solo", limit=30), progress=False)  # same posts, new query
    assert len(booru.requests_for("s=tag")) + len(booru.requests_for("s=view")) == before


def test_resume_extend_and_nothing_to_do(booru, ws):
    first = crawl_board(ws.root, options_for(booru, limit=20), progress=False)
    assert first.written == 20 and not first.exhausted
    fetched = {r.path for r in image_requests(booru)}
    assert len(fetched) == 20

    booru.requests.clear()
    again = crawl_board(ws.root, options_for(booru, limit=20), progress=False)
    assert again.up_to_date and again.written == 0
    assert booru.requests == []  # a finished crawl sends nothing at all

    more = crawl_board(ws.root, options_for(booru, limit=50), progress=False)
    assert more.already_done == 20 and more.written == 30
    assert {r.path for r in image_requests(booru)}.isdisjoint(fetched)
    rows = read_stage(ws, CRAWL)
    assert rows.num_rows == 50
    newest = sorted((p.id for p in booru.posts), reverse=True)[:50]
    assert sorted(int(i) for i in rows["source_id"].to_pylist()) == sorted(newest)


def test_same_image_from_two_posts_and_two_queries_is_stored_once(booru, ws):
    from tests.fakebooru import FakePost

    template = booru.posts[1]
    booru.posts.append(FakePost(9001, template.data, template.ext, ["1girl", "twin"]))
    booru.posts.append(FakePost(9002, template.data, template.ext, ["1girl", "twin", "other"]))
    crawl_board(ws.root, options_for(booru, tags="twin"), progress=False)
    crawl_board(ws.root, options_for(booru, tags="other"), progress=False)
    crawl_board(ws.root, options_for(booru, tags="1girl", limit=2), progress=False)
    rows = rows_by_id(ws)
    assert rows["127.0.0.1:9001"]["image_id"] == rows["127.0.0.1:9002"]["image_id"] == template.md5
    assert len(list(ws.images.rglob(f"{template.md5}.*"))) == 1
    assert len([r for r in image_requests(booru) if template.md5 in r.path]) == 1


def test_rating_and_min_side_skip_with_reasons(booru, ws):
    booru.posts[0].rating = "q"
    report = crawl_board(ws.root, options_for(booru, ratings=("general",), min_side=200), progress=False)
    rows = rows_by_id(ws)
    questionable = rows[f"127.0.0.1:{booru.posts[0].id}"]
    assert (questionable["status"], questionable["error"]) == ("skipped", "rating")
    small = [r for r in rows.values() if r["error"] == "too_small"]
    assert small and all(r["status"] == "skipped" for r in small)
    assert report.outcomes[("skipped", "too_small")] == len(small)
    tiny = {p.id for p in booru.posts if 0 < min(p.width, p.height) < 200}
    assert {int(r["source_id"]) for r in small} == tiny
    assert not {r.path for r in image_requests(booru)} & {booru.file_url_for(booru.post(i)) for i in tiny}


def test_paging_is_by_keyset_so_deep_pages_never_happen(booru, ws):
    booru.faults.too_deep_after_pid = 0  # this engine refuses any offset at all
    crawl_board(ws.root, options_for(booru, limit=1000), progress=False)
    listings = booru.requests_for("s=post")
    assert len(listings) >= 1
    assert all(r.query.get("pid", "0") == "0" for r in listings)
    assert booru.faults.fired["too_deep"] == 0
    assert read_stage(ws, CRAWL).num_rows == len(booru.posts)


def test_small_pages_walk_the_whole_board_by_id(booru, ws):
    from crawl.gelbooru import GelbooruClient
    from crawl.http import HttpClient

    client = GelbooruClient(HttpClient(booru.url, rate=0), booru.url)
    pages = list(client.iter_pages(["1girl"], page_size=25))
    ids = [p.id for page in pages for p in page.posts]
    assert ids == sorted((p.id for p in booru.posts), reverse=True)
    assert len(pages) == -(-len(booru.posts) // 25)
    assert "id:<" in booru.requests_for("s=post")[-1].query["tags"]


def test_a_sort_query_pages_by_offset_and_stops_at_the_depth_limit(booru, caplog):
    from crawl.gelbooru import GelbooruClient
    from crawl.http import HttpClient

    for i, post in enumerate(booru.posts):
        post.score = i
    booru.faults.too_deep_after_pid = 1
    client = GelbooruClient(HttpClient(booru.url, rate=0), booru.url)
    pages = list(client.iter_pages(["1girl", "sort:score"], page_size=25))
    assert booru.faults.fired["too_deep"] == 1
    assert "depth limit" in caplog.text
    scores = [p.score for page in pages for p in page.posts]
    assert len(scores) == 50 and scores == sorted(scores, reverse=True)
    assert [r.query["pid"] for r in booru.requests_for("s=post")] == ["0", "1", "2"]


def test_sample_size_fetches_samples_without_an_md5_check(booru, ws):
    crawl_board(ws.root, options_for(booru, size="sample", limit=5, api_format="json"), progress=False)
    assert all(r["status"] == "ok" for r in rows_by_id(ws).values())


def test_credentials_go_with_every_api_call_and_nowhere_else(booru, ws):
    from curate.manifest import part_files, part_metadata

    options = options_for(booru, limit=5, api_key="k3y", user_id="42")
    assert "k3y" not in repr(options)
    crawl_board(ws.root, options, progress=False)
    api_calls = booru.requests_for("page=dapi")
    assert api_calls
    assert all((r.query.get("api_key"), r.query.get("user_id")) == ("k3y", "42") for r in api_calls)
    assert not any("api_key" in r.raw for r in booru.requests if r.path.startswith("/images/"))
    for path in part_files(ws, CRAWL):
        assert "k3y" not in str(part_metadata(path)) and b"k3y" not in path.read_bytes()
    with pytest.raises(ValueError, match="go together"):
        crawl_board(ws.root, options_for(booru, limit=5, api_key="k3y"), progress=False)
