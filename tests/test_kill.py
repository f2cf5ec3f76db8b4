"""SIGKILL a crawl mid-run, run it again: the manifest equals that of a crawl never interrupted."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds

from crawl.board import crawl_board
from curate.manifest import CRAWL, read_stage
from curate.workspace import Workspace
from tests.conftest import REPO, options_for


def start_crawl(booru, root) -> subprocess.Popen:
    args = [
        "crawl",
        "--tags",
        "1girl",
        "--limit",
        "1000",
        "--base-url",
        booru.url,
        "--rate",
        "0",
        "--concurrency",
        "2",
        "--part-rows",
        "8",
        "--quiet",
        "-w",
        str(root),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "curate", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def kill_after_parts(process: subprocess.Popen, ws: Workspace, parts: int, deadline: float = 60) -> None:
    folder = ws.manifest_dir(CRAWL.name)
    stop = time.monotonic() + deadline
    while time.monotonic() < stop and process.poll() is None:
        if len(list(folder.glob("part-*.parquet"))) >= parts:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the crawl finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_crawls_resume_to_the_same_manifest(booru, tmp_path):
    booru.faults.latency = 0.01  # slow enough that a kill lands mid-crawl
    killed = Workspace.open(tmp_path / "killed")
    for parts in (2, 6):  # kill twice, at different depths
        kill_after_parts(start_crawl(booru, killed.root), killed, parts)
    finish = start_crawl(booru, killed.root)
    _, err = finish.communicate(timeout=120)
    assert finish.returncode == 0, err.decode()

    booru.faults.latency = 0
    clean = Workspace.open(tmp_path / "clean")
    crawl_board(clean.root, options_for(booru), progress=False)

    columns = ["post_id", "status", "error", "image_id", "path", "tags_character"]
    resumed = read_stage(killed, CRAWL, columns).sort_by("post_id").to_pylist()
    assert resumed == read_stage(clean, CRAWL, columns).sort_by("post_id").to_pylist()
    assert len(resumed) == len(booru.posts)

    raw = ds.dataset(killed.manifest_dir(CRAWL.name), format="parquet").to_table(columns=["post_id"])
    assert raw.num_rows == len(set(raw["post_id"].to_pylist())), "a post has two rows"

    stored = sorted(p for p in killed.images.rglob("*") if p.is_file())
    assert {killed.relative(p) for p in stored} == {r["path"] for r in resumed if r["path"]}
    for path in stored:
        assert hashlib.md5(path.read_bytes()).hexdigest() == path.stem
    assert not [p for p in killed.tmp.rglob("*") if p.is_file()], "partial files left behind"
