"""The CLI: a real crawl through it, status, clear errors without tracebacks, and a fast start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


def curate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curate", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_crawl_status_and_rerun_through_the_cli(booru, ws):
    common = ["--tags", "1girl solo", "--base-url", booru.url, "--rate", "0", "-w", str(ws.root), "--quiet"]
    first = curate("crawl", "--limit", "12", *common)
    assert first.returncode == 0, first.stderr
    assert "12 posts listed" in first.stdout and "ok" in first.stdout
    status = curate("status", "-w", str(ws.root))
    assert status.returncode == 0
    assert "crawl  12 rows" in status.stdout
    assert any(line.split()[:2] == ["ok", "12"] for line in status.stdout.splitlines())
    assert "tag_categories" in status.stdout
    again = curate("crawl", "--limit", "12", *common)
    assert again.returncode == 0 and "already complete" in again.stdout and "nothing to do" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "Invalid value for '--limit'"),
        (["--limit", "ten"], "Invalid value for '--limit'"),
        (["--limit", "5", "--rate", "-1"], "Invalid value for '--rate'"),
        (["--limit", "5", "--rating", "general,spicy"], "--rating takes general, sensitive"),
        (["--limit", "5", "--base-url", "ftp://example.org"], "--base-url must be an http(s) URL"),
        (["--limit", "5", "--tags", "  "], "--tags is empty"),
    ],
)
def test_bad_options_get_a_clear_message_and_no_traceback(args, message, tmp_path):
    if "--tags" not in args:
        args = ["--tags", "solo", *args]
    result = curate("crawl", *args, "-w", str(tmp_path / "w"))
    assert result.returncode == 2
    assert message in " ".join((result.stderr + result.stdout).split())
    assert "Traceback" not in result.stderr


def test_a_board_that_keeps_sending_garbage_stops_the_crawl_cleanly(booru, ws):
    booru.faults.malformed_listing(times=None, kind="xml")
    result = curate(
        "crawl",
        "--tags",
        "solo",
        "--limit",
        "5",
        "--base-url",
        booru.url,
        "--rate",
        "0",
        "-w",
        str(ws.root),
        "--quiet",
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "unparsable" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_and_ingest_of_missing_things_are_clear(tmp_path):
    result = curate("status", "-w", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no workspace at" in result.stderr
    result = curate("ingest", str(tmp_path / "nothing"), "-w", str(tmp_path / "w"))
    assert result.returncode == 2 and "is not a folder" in result.stderr


def test_help_crawl_and_status_never_import_heavy_libraries(booru, ws):
    probe = f"""
import sys
from typer.testing import CliRunner
from curate.cli import app
runner = CliRunner()
assert runner.invoke(app, ["--help"]).exit_code == 0
heavy_after_help = [m for m in ("pyarrow", "requests", "PIL") if m in sys.modules]
result = runner.invoke(app, ["crawl", "--tags", "solo", "--limit", "3", "--base-url", "{booru.url}",
                             "--rate", "0", "-w", r"{ws.root}", "--quiet"])
assert result.exit_code == 0, result.output
assert runner.invoke(app, ["status", "-w", r"{ws.root}"]).exit_code == 0
print(heavy_after_help, [m for m in ("torch", "timm", "faiss", "cv2", "torchvision") if m in sys.modules])
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] []"


def test_help_lists_every_family_of_commands_in_pipeline_order():
    import typer

    from curate.cli import app

    group = typer.main.get_command(app)
    assert group.list_commands(None) == [
        "crawl", "ingest", "crop", "detect-train", "detect-eval", "tag", "tag-train", "embed", "filter",
        "export", "report", "run", "status", "train", "generate", "metrics", "directions", "serve", "labels",
    ]  # fmt: skip
    assert group.get_command(None, "labels").list_commands(None) == ["stats", "select"]


def test_version_answers_without_a_command():
    from curate import __version__

    result = curate("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"curate {__version__}"
