"""XML and JSON listing records normalise into the same Post."""

from __future__ import annotations

import pytest

from crawl.gelbooru import GelbooruClient, Unparsable, source_name
from crawl.http import HttpClient

MD5 = "0123456789abcdef0123456789abcdef"
XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<posts count="8123" offset="0">
  <post height="1200" score="" file_url="https://safebooru.org//images/4321/{MD5}.jpg" parent_id=""
    sample_url="https://safebooru.org//samples/4321/sample_{MD5}.jpg" rating="s"
    tags=" 1girl jojo&amp;#039;s_bizarre_adventure  solo " id="6077620" width="800" md5="{MD5}"
    created_at="Sat Nov 21 12:00:00 +0000 2026" status="active"/>
  <post id="not-a-number" md5="{MD5}"/>
</posts>""".encode()
JSON = f"""[{{"directory": "4321", "hash": "{MD5}", "height": 1200, "id": 6077620, "image": "{MD5}.jpg",
  "rating": "general", "sample": true, "score": null, "tags": "1girl jojo&#039;s_bizarre_adventure solo",
  "width": 800, "owner": "danbooru"}}]""".encode()


@pytest.fixture
def client() -> GelbooruClient:
    return GelbooruClient(HttpClient("https://safebooru.org", rate=0), "https://safebooru.org/")


def test_xml_and_json_give_the_same_post(client):
    xml_page = client._parse_xml(XML)
    json_page = client._parse_json(JSON)
    assert xml_page.count == 8123 and json_page.count is None
    a, b = xml_page.posts[0], json_page.posts[0]
    for post in (a, b):
        assert post.post_id == "safebooru:6077620"
        assert post.md5 == MD5
        assert post.rating == "general"
        assert post.score is None
        assert post.tags == ["1girl", "jojo's_bizarre_adventure", "solo"]
        assert (post.width, post.height) == (800, 1200)
        assert post.file_url.endswith(f"/images/4321/{MD5}.jpg")
        assert post.sample_url.endswith(f"/samples/4321/sample_{MD5}.jpg")
    assert b.file_url == f"https://safebooru.org/images/4321/{MD5}.jpg"


def test_a_record_without_a_usable_id_becomes_a_bad_record(client):
    page = client._parse_xml(XML)
    assert len(page.posts) == 1
    assert len(page.bad) == 1 and page.bad[0].source_id == "not-a-number"


def test_too_deep_and_garbage_are_told_apart(client):
    from crawl.gelbooru import TooDeep

    with pytest.raises(TooDeep):
        client._parse_xml(
            b'<?xml version="1.0"?><response success="false" reason="Too deep! Pull it back some."/>'
        )
    with pytest.raises(TooDeep):
        client._parse_json(b'{"success": false, "message": "Too deep! Pull it back some."}')
    with pytest.raises(Unparsable):
        client._parse_xml(b'<?xml version="1.0"?><posts count="5"><post id="1" ')
    with pytest.raises(Unparsable):
        client._parse_json(b'[{"id": 1, "hash": ')
    assert len(client._parse_json(b"")) == 0  # the engine's empty body for no results


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://safebooru.org", "safebooru"),
        ("https://www.gelbooru.com/", "gelbooru"),
        ("http://127.0.0.1:8080", "127.0.0.1"),
        ("http://localhost:9000", "localhost"),
    ],
)
def test_source_names(url, name):
    assert source_name(url) == name


SIDEBAR = """<html><body><div id="header"><ul id="navbar"><li class="tag-type-general">x</li></ul></div>
<ul id="tag-sidebar"><li>Copyright</li>
<li class="tag-type-copyright tag"><a href="index.php?page=wiki&amp;s=list&amp;search=touhou">?</a>
 <a href="index.php?page=post&amp;s=list&amp;tags=touhou">touhou</a> <span>12</span></li>
<li class="tag-type-character tag">
 <a href="index.php?page=post&amp;s=list&amp;tags=hakurei_reimu">hakurei reimu</a></li>
<li class="tag-type-metadata tag">
 <a href="index.php?page=post&amp;s=list&amp;tags=jojo%27s_pose">jojo's pose</a></li>
</ul></body></html>"""


def test_sidebar_in_either_markup_gives_categories():
    from crawl.gelbooru import parse_tag_sidebar

    expected = {"touhou": "copyright", "hakurei_reimu": "character", "jojo's_pose": "metadata"}
    assert parse_tag_sidebar(SIDEBAR) == expected
    other_board = SIDEBAR.replace('<ul id="tag-sidebar">', '<ul class="tag-list">')
    assert parse_tag_sidebar(other_board) == expected
    assert parse_tag_sidebar("<html><body>no list here</body></html>") == {}
