"""Downloads in worker processes: same results as threads, retries counted, a dead worker stops cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from crawl import fetchers
from crawl.board import crawl_board
from crawl.fetchers import WorkerDied, auto_processes
from curate.manifest import CRAWL, read_stage
from curate.workspace import Workspace
from tests.conftest import options_for

COLUMNS = ["post_id", "status", "error", "image_id", "path", "width", "height", "tags_artist"]


def test_processes_and_threads_give_the_same_manifest(booru, tmp_path):
    tables = []
    for processes in (1, 2):
        ws = Workspace.open(tmp_path / f"p{processes}")
        report = crawl_board(ws.root, options_for(booru, processes=processes), progress=False)
        assert report.written == len(booru.posts)
        tables.append(read_stage(ws, CRAWL, COLUMNS).sort_by("post_id").to_pylist())
    assert tables[0] == tables[1]


def test_retries_in_worker_processes_are_counted(booru, ws):
    victim = booru.posts[-3]
    booru.faults.rate_limit(victim.md5, times=2, status=503, retry_after=None)
    report = crawl_board(ws.root, options_for(booru, processes=2, limit=20), progress=False)
    assert report.retries == 2
    assert report.outcomes[("ok", None)] == 20


def test_a_worker_that_dies_stops_the_crawl_with_a_clear_error(booru, ws, monkeypatch):
    booru.faults.latency = 0.05  # keep downloads in flight while a worker is killed
    started: list[fetchers.ProcessFetcher] = []
    original = fetchers.ProcessFetcher.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        started.append(self)
        threading.Timer(0.5, lambda: os.kill(self.workers[0].pid, signal.SIGKILL)).start()

    monkeypatch.setattr(fetchers.ProcessFetcher, "__init__", remember)
    begin = time.monotonic()
    with pytest.raises(WorkerDied, match=r"worker process died.*--processes 1"):
        crawl_board(ws.root, options_for(booru, processes=2), progress=False)
    assert time.monotonic() - begin < 30
    assert not any(w.is_alive() for w in started[0].workers)
    done = read_stage(ws, CRAWL)
    assert 0 < done.num_rows < len(booru.posts)  # what finished before is kept
    assert set(done["error"].to_pylist()) <= {None, "decode_error"}  # no row blames the dead worker
    resumed = crawl_board(ws.root, options_for(booru, processes=1), progress=False)
    assert resumed.already_done == done.num_rows
    assert read_stage(ws, CRAWL).num_rows == len(booru.posts)


def test_processes_only_when_the_rate_lets_cpu_decide():
    assert auto_processes(rate=2.0, limit=100_000) == 1  # polite: the limiter decides
    assert auto_processes(rate=0, limit=50) == 1  # too small to pay for starting workers
    assert auto_processes(rate=0, limit=100_000) == min(os.cpu_count() or 1, 4)
