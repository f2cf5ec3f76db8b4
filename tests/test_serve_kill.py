"""A `curate serve` killed at random moments (SIGKILL) while clients post decisions as fast as they can:
every decision answered with 200 is in the review manifest, and no half-written part is visible."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

pytest.importorskip("faiss")
pytest.importorskip("httpx")

import httpx
import pyarrow.parquet as pq

from curate.manifest import REVIEW, part_files
from tests.browser import free_port
from tests.conftest import REPO
from tests.serve_workspace import build_workspace

KILLS = 4
CLIENTS = 2
# After the first kill the server compacts its review parts every few decisions, so that kills land in
# compactions too (the real threshold, 256 parts, is more than a test posts).
COMPACTING = "import curate.review as r; r.COMPACT_AFTER = 6; from curate.cli import main; main()"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("kill") / "ws")


def start_server(ws, port: int, *, compacting: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    program = ["-c", COMPACTING] if compacting else ["-m", "curate"]
    command = [sys.executable, *program, "serve", "--workspace", str(ws.root), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/counts", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.kill()
    raise AssertionError("the server did not start")


def post_decisions(port: int, faces: list[str], offset: int, answered: list, stop: threading.Event) -> None:
    """Decide faces in turn (an undo every fifth call) until the server dies; record each 200."""
    decisions = ("good", "bad", "skip")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        n = offset
        while not stop.is_set():
            face = faces[n % len(faces)]
            try:
                if n % 5 == 4:
                    reply = client.post("/api/review/undo", json={"face_id": faces[(n - 1) % len(faces)]})
                else:
                    reply = client.post("/api/review", json={"face_id": face, "decision": decisions[n % 3]})
            except httpx.TransportError:
                return  # killed
            if reply.status_code == 200:
                made = reply.json()
                answered.append((made["decision_id"], made["face_id"], made["decision"], made["undo"]))
            else:
                assert reply.status_code == 409, reply.text  # an undo with nothing left to take back
            n += CLIENTS


def test_a_killed_server_loses_no_answered_decision(ws):
    faces = [f"good{n}-0" for n in range(24)] + [f"bad{n}-0" for n in range(15)]
    rng = random.Random(1)
    answered: list[tuple] = []
    killed: list[int] = []
    folder = ws.manifest_dir(REVIEW.name)
    for cycle in range(KILLS):
        port = free_port()
        server = start_server(ws, port, compacting=cycle > 0)
        # a restarted server sweeps the half-written parts its killed forerunners left
        assert not [p for p in folder.glob(".*.tmp") if any(f"-{pid}-" in p.name for pid in killed)]
        stop = threading.Event()
        before = len(answered)
        clients = [
            threading.Thread(target=post_decisions, args=(port, faces, k, answered, stop))
            for k in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while len(answered) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        server.stdout.close()
        killed.append(server.pid)
        stop.set()
        for client in clients:
            client.join(timeout=30)
        assert len(answered) > before, "no decision was answered before the kill"

    rows, seen = [], set()
    for part in part_files(ws, REVIEW):
        for row in pq.read_table(part).to_pylist():  # every visible part reads whole
            if row["decision_id"] not in seen:  # a compaction cut short copies rows; each counts once
                seen.add(row["decision_id"])
                rows.append(row)
    written = Counter((r["decision_id"], r["face_id"], r["decision"], r["undo"]) for r in rows)
    lost = Counter(answered) - written
    assert not lost, f"{sum(lost.values())} answered decisions are missing, e.g. {list(lost)[:3]}"
    assert len(rows) >= len(answered) > KILLS
