"""`curate report`: the page, its images and charts, opened in headless Chromium when there is one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from curate.export.select import SelectOptions
from curate.export.stage import ExportOptions, export_dataset
from curate.report import build_report
from tests.conftest import REPO, curated_workspace


@pytest.fixture(scope="module")
def report(fixtures, tmp_path_factory):
    ws = curated_workspace(fixtures, tmp_path_factory.mktemp("report"))
    export_dataset(ws.root, ExportOptions("parquet", None, 32, SelectOptions(), False))
    result = build_report(ws.root, progress=False)
    return ws, result


def chromium() -> str | None:
    """Debian's chromium (`.ci/run` installs it); missing outside CI skips, under CI fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
    return found


def test_the_page_shows_the_funnel_sheets_duplicates_and_scores(report):
    _, result = report
    page = result.page.read_text(encoding="utf-8")
    faces = 11  # cascade crops of the ten illustrations
    assert re.search(r"<td>faces</td><td class=n>11</td>", page) and "<td>kept</td><td class=n>9</td>" in page
    assert "<td>exported</td><td class=n>9</td>" in page
    assert "Kept faces (9)" in page and "Dropped: duplicate (1)" in page and "Dropped: low_score (1)" in page
    assert "Near-duplicate groups (1;" in page and "threshold 0.505" in page
    assert '<img src="tags.png"' in page and "&quot;threshold&quot;: 0.505" in page  # the parameters
    assert result.thumbnails == faces
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == faces + 2 + 1  # every face once, the duplicate pair again, the tag chart
    assert all((result.page.parent / source).is_file() for source in sources)
    assert all(not source.startswith(("/", "http")) for source in sources)  # works when copied elsewhere


def dump_dom(browser: str, folder: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The DOM of `folder`/index.html after its scripts ran, opened from a copy of the folder alone
    (away from the workspace, so only relative links resolve); chromium's log is on stderr."""
    copied = tmp_path / "copied"
    shutil.copytree(folder, copied)
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=5000", "--dump-dom", (copied / "index.html").as_uri(),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_page_loads_in_chromium_without_errors(report, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium here")
    done = dump_dom(browser, report[1].page.parent, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-broken-images="0"' in done.stdout, done.stdout[:500]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def test_cli(report):
    ws, _ = report
    done = subprocess.run(
        [sys.executable, "-m", "curate", "report", "-w", str(ws.root), "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "index.html (11 thumbnails)" in done.stdout and not list(Path(ws.root).glob(".report.*"))
