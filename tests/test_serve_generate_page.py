"""The generate page in Debian's chromium against the app on a loopback port (with a token, as off
loopback): search and pick a tag, generate, see the images at the run's size, mix two, reload an
entry's parameters from the history; no console errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from curate.serve.app import ServeOptions, create_app
from tests.browser import browser_page, live_server

TOKEN = "page-token"


@pytest.fixture
def app(colour_run, tmp_path):
    run = tmp_path / "ws" / "runs" / "colours"
    shutil.copytree(colour_run, run, ignore=shutil.ignore_patterns("fakes-*", "reals.png", "playground"))
    return create_app(ServeOptions(workspace=tmp_path / "ws", run=run, device="cpu", token=TOKEN))


def test_pick_a_tag_generate_mix_and_reload_from_the_history(app, tmp_path):
    playground = tmp_path / "ws" / "runs" / "colours" / "playground"
    with live_server(app) as url, browser_page() as browser:
        page = browser.page
        page.goto(f"{url}/generate?token={TOKEN}")
        page.wait_for_selector("#tags input[value=label_3]")
        assert page.input_value("#run") == "colours" and page.input_value("#snapshot") == "snapshot-000006.pt"
        page.fill("#tag-search", "label 2")  # the Illustration2Vec spelling finds label_2
        visible = page.eval_on_selector_all("#tags label:not([hidden])", "ls => ls.map(l => l.textContent)")
        assert visible == ["label_2"]
        page.check("#tags input[value=label_2]")
        page.fill("#count", "3")
        page.fill("#seed", "7")
        page.click("#generate-button")
        page.wait_for_function(
            "document.querySelectorAll('#grid img').length === 3 && "
            "[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        sizes = page.eval_on_selector_all("#grid img", "is => is.map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[16, 16]] * 3
        # the image shown is the one kept: blue for label_2, drawn on a canvas to read its pixels
        mean = page.evaluate(
            """() => { const img = document.querySelector('#grid img');
            const c = document.createElement('canvas'); c.width = c.height = 16;
            const g = c.getContext('2d'); g.drawImage(img, 0, 0);
            const d = g.getImageData(0, 0, 16, 16).data; const m = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) m[k] += d[i + k] / 256;
            return m; }"""
        )
        assert int(np.argmax(mean)) == 2, mean
        (entry,) = [p for p in playground.iterdir() if not p.name.startswith(".")]
        params = json.loads((entry / "params.json").read_text())
        assert params["request"]["labels"] == ["label_2"] and params["request"]["seeds"] == [7, 8, 9]
        href = page.get_attribute("#grid figure a", "href")
        assert href.endswith(f"/api/playground/{entry.name}/0.png?download=1&token={TOKEN}")
        assert page.text_content("#history li") and page.is_visible("#load-params")

        page.click("#grid figure[data-k='0'] img")
        assert page.is_disabled("#mix-button")
        page.click("#grid figure[data-k='2'] img")
        page.click("#mix-button")
        page.wait_for_function("document.querySelectorAll('#grid img').length === 4")
        captions = page.eval_on_selector_all("#grid figcaption span", "s => s.map(x => x.textContent.trim())")
        assert captions == ["A", "B", "A with B's coarse", "A with B's middle"]
        page.wait_for_function("document.querySelectorAll('#history li').length === 2")

        # back to the first entry from the history, its parameters into the form
        page.fill("#seed", "0")
        page.uncheck("#tags input[value=label_2]")
        page.click(f"#history button[data-entry='{entry.name}']")
        page.wait_for_selector("#load-params:not([hidden])")
        page.click("#load-params")
        page.wait_for_function("document.querySelector('#seed').value === '7'")
        assert page.is_checked("#tags input[value=label_2]") and page.input_value("#count") == "3"

        # a bad request says why on the page, not in the console
        page.select_option("#mode", "tags")
        page.uncheck("#tags input[value=label_2]")
        page.click("#generate-button")
        assert "check the tags" in page.text_content("#status")
    assert browser.errors == []
