"""The review page in Debian's chromium (playwright pointed at it): keyboard review lands in the review
manifest, the filter runs again and the counts change, labels stay text, and no console errors."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss")
pytest.importorskip("playwright")

from curate import review
from curate.manifest import REVIEW, read_stage
from curate.serve.app import ServeOptions, create_app
from tests.browser import browser_page, live_server
from tests.serve_workspace import NASTY_LABEL, build_workspace

EVERY_FACE_HAS = "[...document.querySelectorAll('.face')].every(n => n.textContent.includes('%s'))"
TOKEN = "page-token"  # the page is opened as a token off loopback would be: every call must carry it


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    ws = build_workspace(tmp_path_factory.mktemp("page") / "ws")
    app = create_app(ServeOptions(workspace=ws.root, token=TOKEN))
    with live_server(app) as url, browser_page() as browser:
        yield ws, url, browser


def counts(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "[data-count]", "nodes => Object.fromEntries(nodes.map(n => [n.dataset.count, n.textContent]))"
    )


def test_review_by_keyboard_then_run_the_filter(served):
    ws, url, browser = served
    page = browser.page
    page.goto(f"{url}/review?token={TOKEN}")
    page.wait_for_selector(".face.current")
    page.wait_for_function("document.querySelector('[data-count=kept]').textContent !== '–'")
    shown = page.eval_on_selector_all(".face", "nodes => nodes.map(n => n.dataset.face)")
    assert len(shown) == 35  # 40 faces, undecided only: the five seeds are left out
    # The crops, fetched with the token in the query: waited for, since they load after the grid is drawn.
    first_crops_loaded = (
        "[...document.querySelectorAll('.face img')].slice(0, 4)"
        ".every(i => i.complete && i.naturalWidth === 64)"
    )
    page.wait_for_function(first_crops_loaded, timeout=10_000)
    before = counts(page)
    assert before["faces"] == "40" and before["good"] == "0"
    assert page.get_attribute("nav a[href^='/generate']", "href") == f"/generate?token={TOKEN}"

    for key in ("g", "g", "b", "Space", "u"):  # good, good, bad, skip, then undo the skip: typed fast
        page.keyboard.press(key)
    page.wait_for_selector("body[data-pending='0']")
    standing = review.decisions(ws)
    assert standing == {shown[0]: "good", shown[1]: "good", shown[2]: "bad"}
    rows = read_stage(ws, REVIEW).to_pylist()
    assert {r["face_id"]: r["undo"] for r in rows}[shown[3]] is True  # the skip, taken back
    assert page.get_attribute(".face.current", "data-face") == shown[3]  # undo went back to the face
    assert "is-good" in page.get_attribute(f'[data-face="{shown[0]}"]', "class")
    assert page.text_content(f'[data-face="{shown[2]}"] .decision') == "bad"
    assert counts(page)["good"] == "2" and counts(page)["bad"] == "1"

    page.keyboard.press("o")  # the original around the current face's crop
    page.wait_for_function(
        f"(() => {{ const i = document.querySelector('[data-face=\"{shown[3]}\"] img');"
        " return i.src.includes('context.jpg') && i.complete && i.naturalWidth === 160; })()"
    )

    page.click("#run-filter")
    page.wait_for_selector("body[data-job=done]", timeout=60_000)
    page.wait_for_function(f"document.querySelector('[data-count=kept]').textContent !== '{before['kept']}'")
    after = counts(page)
    assert int(after["kept"]) > int(before["kept"])  # the two faces people called good are kept now
    asked = f"fetch('/api/counts', {{headers: {{'X-Curate-Token': '{TOKEN}'}}}}).then(r => r.json())"
    assert after["kept"] == str(page.evaluate(asked)["kept"])
    page.wait_for_function("document.querySelectorAll('.face').length === 32")  # decided faces leave the grid
    assert shown[0] not in page.eval_on_selector_all(".face", "nodes => nodes.map(n => n.dataset.face)")
    assert "Filter done" in page.text_content("#status")
    assert browser.errors == []


def test_labels_stay_text_and_clicking_one_narrows_the_grid(served):
    _, url, browser = served
    page = browser.page
    page.goto(f"{url}/review?token={TOKEN}")
    page.wait_for_selector(".face.current")
    page.select_option("#sort", "score")
    page.fill("#query", "1boy")
    page.wait_for_function(EVERY_FACE_HAS % "1boy")
    nasty = page.locator(".labels li", has_text="onerror")
    assert nasty.count() == 1 and nasty.text_content() == NASTY_LABEL
    assert page.locator(".labels img").count() == 0 and page.title() == "curate · review"
    page.locator('[data-face="bad9-0"] .labels li', has_text="smile").click()
    page.wait_for_function("document.querySelector('#query').value === 'smile'")
    page.wait_for_function(EVERY_FACE_HAS % "smile")
    page.dblclick('[data-face="bad9-0"]')
    page.wait_for_selector("#details:not([hidden])")
    assert "safebooru:" in page.text_content("#details")
    assert browser.errors == []
