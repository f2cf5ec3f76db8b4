"""The review API through FastAPI's test client: every route, and each bad input gets its 4xx and changes
nothing on disk."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time

import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from PIL import Image

from curate import review
from curate.manifest import CROP, FILTER, REVIEW, part_files, read_stage, write_part
from curate.serve import jobs, review_api
from curate.serve.app import MAX_BODY, ServeOptions, create_app, resolve_token
from curate.workspace import Workspace
from tests.serve_workspace import GOOD, NASTY_LABEL, build_workspace, tree


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("serve") / "ws")


@pytest.fixture(scope="module")
def client(ws):
    with TestClient(create_app(ServeOptions(workspace=ws.root))) as client:
        yield client


def ids(page: dict) -> list[str]:
    return [face["face_id"] for face in page["faces"]]


def test_every_review_route_is_tested(client):
    paths = client.get("/api/openapi.json").json()["paths"]
    review_routes = {(method.upper(), path) for path, methods in paths.items() for method in methods}
    assert {
        ("GET", "/api/faces"), ("GET", "/api/faces/{face_id}"), ("GET", "/api/faces/{face_id}/crop.png"),
        ("GET", "/api/faces/{face_id}/context.jpg"), ("POST", "/api/review"), ("POST", "/api/review/undo"),
        ("GET", "/api/counts"), ("POST", "/api/filter/run"), ("GET", "/api/filter/job"),
    } <= review_routes  # fmt: skip


def test_listing_sorts_narrows_and_pages(client, ws):
    whole = client.get("/api/faces", params={"limit": 200}).json()
    assert whole["total"] == GOOD + 16 and len(whole["faces"]) == GOOD + 16  # the no-face row is no face
    scores = {f["face_id"]: f["score"] for f in whole["faces"]}
    assert ids(whole) == review.uncertainty_order(scores, whole["threshold"])
    by_score = client.get("/api/faces", params={"sort": "score", "limit": 200}).json()
    values = [f["score"] for f in by_score["faces"]]
    assert values == sorted(values, reverse=True)
    page = client.get("/api/faces", params={"sort": "score", "offset": 10, "limit": 5}).json()
    assert ids(page) == ids(by_score)[10:15] and page["total"] == whole["total"]
    by_reason = client.get("/api/faces", params={"sort": "reason", "limit": 200}).json()
    reasons = [f["reason"] for f in by_reason["faces"]]
    assert reasons == sorted(reasons, key=["kept", "low_score", "duplicate", "bad_seed"].index)
    grouped = client.get("/api/faces", params={"sort": "group", "limit": 200}).json()
    assert ids(grouped)[:2] == ["copy0-0", "good0-0"]  # the keeper (the copy: same crop) first
    assert grouped["faces"][1]["dup_of"] == "copy0-0" and grouped["faces"][1]["reason"] == "duplicate"
    dropped = client.get("/api/faces", params={"reason": "bad_seed"}).json()
    assert sorted(ids(dropped)) == ["bad1-0", "bad2-0"]
    smiling = client.get("/api/faces", params={"q": "1girl, Smile", "sort": "query"}).json()
    assert ids(smiling) and all({"1girl", "smile"} <= set(f["labels"]) for f in smiling["faces"])
    assert smiling["total"] == sum(1 for n in range(GOOD) if n % 3 == 0)
    todo = client.get("/api/faces", params={"todo": "true", "limit": 200}).json()
    assert not {"good1-0", "good2-0", "good3-0", "bad1-0", "bad2-0"} & set(ids(todo))  # seeds are decided
    face = next(f for f in whole["faces"] if f["face_id"] == "good4-0")
    assert face["post_id"] == "safebooru:1004" and face["post_url"].endswith("/good4.png")
    assert face["labels"] == ["1girl", "solo"] and face["crop"] == "/api/faces/good4-0/crop.png"


def test_counts_show_the_filter_and_the_decisions(client, ws):
    counts = client.get("/api/counts").json()
    filtered = read_stage(ws, FILTER).to_pylist()
    assert counts["faces"] == len(filtered) == GOOD + 16
    assert counts["kept"] == sum(r["keep"] for r in filtered)
    assert counts["duplicates"] == 1 and counts["reasons"]["bad_seed"] == 2
    assert counts["dropped"] == counts["faces"] - counts["kept"] - counts["duplicates"]
    assert counts["seeds"] == {"good": 3, "bad": 2}
    assert 0 < counts["threshold"] < 1 and counts["estimated_precision"] == 1.0
    assert counts["job"]["state"] in ("idle", "done")


def test_details_crop_and_the_original_around_it(client, ws):
    info = client.get("/api/faces/good4-0").json()
    assert info["crop_box"] == [40, 20, 100, 80] and info["image_size"] == [160, 120]
    assert info["posts"] == [
        {"post_id": "safebooru:1004", "url": "https://safebooru.example/images/good4.png"}
    ]
    assert len(info["nearest_seeds"]) == 3 and info["history"] == []
    crop = client.get("/api/faces/good4-0/crop.png")
    assert crop.status_code == 200 and crop.headers["content-type"] == "image/png"
    assert crop.content == (ws.root / "crops/go/good4-0.png").read_bytes()
    context = client.get("/api/faces/good4-0/context.jpg")
    assert context.status_code == 200 and context.headers["content-type"] == "image/jpeg"
    shown = Image.open(io.BytesIO(context.content))
    assert shown.size == (160, 120)  # a crop side each way reaches past this small original: all of it
    red = shown.convert("RGB").getpixel((40, 50))  # the crop box's left edge, outlined
    assert red[0] > 200 and red[1] < 90 and red[2] < 90


def test_bad_face_ids_get_4xx_and_read_nothing(client, ws):
    before = tree(ws)
    for path, code in [
        ("/api/faces/nobody-0", 404), ("/api/faces/nobody-0/crop.png", 404),
        ("/api/faces/nobody-0/context.jpg", 404), ("/api/faces/noface", 400), ("/api/faces/good1-0.png", 400),
        ("/api/faces/..%2F..%2Fetc%2Fpasswd-0/crop.png", 404), ("/api/faces/%2E%2E-0/crop.png", 400),
        ("/api/faces/" + "x" * 70 + "-0", 400),
    ]:  # fmt: skip
        answer = client.get(path)
        assert answer.status_code == code, (path, answer.text)
        assert "detail" in answer.json()
    assert tree(ws) == before


@pytest.mark.parametrize(
    "params",
    [{"limit": 201}, {"limit": 0}, {"offset": -1}, {"sort": "random"}, {"reason": "ugly"},
     {"q": "x" * 201}, {"limit": "many"}, {"sort": "query"}],
)  # fmt: skip
def test_bad_listing_parameters_get_4xx(client, ws, params):
    answer = client.get("/api/faces", params=params)
    assert answer.status_code == (400 if params == {"sort": "query"} else 422), answer.text
    assert answer.json()["detail"]


BAD_DECISIONS = [
    ({"face_id": "nobody-0", "decision": "good"}, 404),
    ({"face_id": "../../etc/passwd-0", "decision": "good"}, 400),
    ({"face_id": "good4-0.png", "decision": "good"}, 400),
    ({"face_id": "good4-0", "decision": "maybe"}, 422),
    ({"face_id": "good4-0"}, 422),
    ({"face_id": "good4-0", "decision": "good", "path": "/etc/passwd"}, 422),
    ({"face_id": "good4-0", "decision": "good", "reviewer": "<script>"}, 422),
    ({"face_id": ["good4-0"], "decision": "good"}, 422),
    ({"face_id": "x" * 81, "decision": "good"}, 422),
    ("not json", 422),
    ([1, 2, 3], 422),
    ({"face_id": "good4-0", "decision": "good", "pad": "x" * MAX_BODY}, 413),
]
BAD_UNDOS = [
    ({"face_id": "nobody-0"}, 404),
    ({"face_id": "../../etc/passwd-0"}, 400),
    ({"face_id": "bad12-0"}, 409),  # a face with no decision to take back
    ({}, 422),
    ({"face_id": "bad12-0", "path": "/etc/passwd"}, 422),
    ('{"face_id": ', 422),
    ({"face_id": "bad12-0", "pad": "x" * MAX_BODY}, 413),
]


@pytest.mark.parametrize(
    "route, body, code",
    [("/api/review", *case) for case in BAD_DECISIONS] + [("/api/review/undo", *case) for case in BAD_UNDOS],
)
def test_bad_decisions_get_4xx_and_write_nothing(client, ws, route, body, code):
    before = tree(ws)
    if isinstance(body, str):
        answer = client.post(route, content=body, headers={"Content-Type": "application/json"})
    else:
        answer = client.post(route, json=body)
    assert answer.status_code == code, answer.text
    assert answer.text == "Content Too Large" if code == 413 else answer.json()["detail"]
    assert tree(ws) == before


def test_a_body_sent_in_chunks_is_bounded_too(client, ws):
    """A body with no Content-Length (chunked) is counted as it arrives: past MAX_BODY it is a 413 and
    nothing is written, however the client sends it."""
    before = tree(ws)
    head = b'{"face_id": "good4-0", "decision": "good", "pad": "'

    def chunks():
        yield head
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    answer = client.post("/api/review", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"] == "Content Too Large", answer.text
    assert "content-length" not in {k.lower() for k in answer.request.headers}
    assert tree(ws) == before
    parts = iter([b'{"face_id": "good4-0", ', b'"decision": "good"}'])  # chunked and small: answered
    small = client.post("/api/review", content=parts, headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and review.decisions(ws)["good4-0"] == "good"


def test_a_decision_is_on_disk_when_answered_and_undo_walks_back(client, ws):
    answer = client.post("/api/review", json={"face_id": "good7-0", "decision": "bad", "reviewer": "ana"})
    assert answer.status_code == 200 and answer.json()["decision"] == "bad"
    rows = [r for r in read_stage(ws, REVIEW).to_pylist() if r["face_id"] == "good7-0"]
    assert rows[-1]["decision"] == "bad" and rows[-1]["reviewer"] == "ana" and rows[-1]["image_id"] == "good7"
    assert client.post("/api/review", json={"face_id": "good7-0", "decision": "skip"}).status_code == 200
    assert client.get("/api/faces/good7-0").json()["history"] == ["bad", "skip"]
    assert client.get("/api/counts").json()["decisions"]["skip"] >= 1
    todo = client.get("/api/faces", params={"todo": "true", "limit": 200}).json()
    assert "good7-0" not in ids(todo)
    undone = client.post("/api/review/undo", json={"face_id": "good7-0"})
    assert undone.json() == {**undone.json(), "decision": "bad", "undo": True}
    assert review.decisions(ws)["good7-0"] == "bad"
    assert client.post("/api/review/undo", json={"face_id": "good7-0"}).json()["decision"] is None
    parts = len(part_files(ws, REVIEW))
    nothing = client.post("/api/review/undo", json={"face_id": "good7-0"})
    assert nothing.status_code == 409 and "no decision to undo" in nothing.json()["detail"]
    assert len(part_files(ws, REVIEW)) == parts
    assert "good7-0" not in review.decisions(ws)
    assert client.app.state.faces.decisions() == review.decisions(ws)  # read part by part, the same
    review.compact(ws)  # one part for all: the cache drops the old names and reads the new one
    assert client.app.state.faces.decisions() == review.decisions(ws) and len(part_files(ws, REVIEW)) == 1


def wait_for_job(client, token: str | None = None) -> dict:
    headers = {"X-Curate-Token": token} if token else {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get("/api/filter/job", headers=headers).json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("the filter job did not finish")


def test_the_filter_runs_again_with_review_seeds(client, ws):
    before = client.get("/api/counts").json()
    kept = [
        f["face_id"]
        for f in client.get("/api/faces", params={"reason": "kept", "limit": 200}).json()["faces"]
    ]
    for face in kept[:6]:  # people say six kept faces are bad: the filter takes them as bad seeds
        assert client.post("/api/review", json={"face_id": face, "decision": "bad"}).status_code == 200
    started = client.post("/api/filter/run")
    assert started.status_code == 202 and started.json()["state"] == "running"
    job = wait_for_job(client)
    assert job["state"] == "done" and job["fraction"] == 1.0, job
    assert job["report"]["bad_seeds"] == before["seeds"]["bad"] + 6
    after = client.get("/api/counts").json()
    assert after["seeds"]["bad"] == before["seeds"]["bad"] + 6
    assert after["kept"] <= before["kept"] - 6 and after["kept"] == job["report"]["kept"]
    assert after["filtered_at"] != before["filtered_at"]
    listed = client.get("/api/faces", params={"reason": "bad_seed", "limit": 200}).json()
    assert set(kept[:6]) <= set(ids(listed))  # the grid's listing follows the new filter part


def test_one_filter_job_at_a_time(client, ws, monkeypatch):
    release = threading.Event()
    steps = []

    def slow(ws, on_progress):
        on_progress("waiting", 0.5)
        steps.append("ran")
        release.wait(30)
        return {"kept": 0, "faces": 0}

    monkeypatch.setattr(jobs, "run_filter", slow)
    parts = part_files(ws, FILTER)
    assert client.post("/api/filter/run").status_code == 202
    while not steps:
        time.sleep(0.01)
    second = client.post("/api/filter/run")
    assert second.status_code == 409 and "already running" in second.json()["detail"]
    job = client.get("/api/filter/job").json()
    assert (job["state"], job["step"], job["fraction"]) == ("running", "waiting", 0.5)
    release.set()
    assert wait_for_job(client)["state"] == "done"
    assert steps == ["ran"] and part_files(ws, FILTER) == parts


def test_a_failing_filter_is_a_failed_job_with_its_message(tmp_path):
    bare = Workspace.open(tmp_path / "bare")  # cropped, never embedded
    write_part(bare, CROP, [{"face_id": "a-0", "image_id": "a", "status": "ok", "path": "crops/a-0.png",
                             "cropped_at": review.now_utc()}])  # fmt: skip
    with TestClient(create_app(ServeOptions(workspace=bare.root))) as client:
        assert client.post("/api/filter/run").status_code == 202
        job = wait_for_job(client)
        assert job["state"] == "failed" and "no embedded faces" in job["message"]
        assert client.get("/api/faces/a-0/crop.png").status_code == 404  # its crop file is missing
        assert client.get("/api/faces/a-0/context.jpg").status_code == 404  # no original recorded
        assert client.get("/api/counts").json()["unfiltered"] == 1
    assert part_files(bare, FILTER) == []


def test_a_token_guards_every_api_call(ws):
    before = tree(ws)
    with TestClient(create_app(ServeOptions(workspace=ws.root, token="s3cret"))) as client:
        for headers, params in [({}, {}), ({"X-Curate-Token": "wrong"}, {}), ({}, {"token": "s3cre"})]:
            assert client.get("/api/counts", headers=headers, params=params).status_code == 401
            denied = client.post(
                "/api/review", json={"face_id": "good4-0", "decision": "good"}, headers=headers
            )
            assert denied.status_code == 401 and denied.json()["detail"] == "a valid token is required"
            assert client.post("/api/filter/run", headers=headers, params=params).status_code == 401
            assert (
                client.get("/api/faces/good4-0/crop.png", headers=headers, params=params).status_code == 401
            )
        assert tree(ws) == before
        assert client.get("/review").status_code == 200  # the page itself holds no data
        assert client.get("/api/counts", headers={"X-Curate-Token": "s3cret"}).status_code == 200
        assert client.get("/api/faces/good4-0/crop.png", params={"token": "s3cret"}).status_code == 200


def test_off_loopback_a_token_is_made_and_printed(tmp_path, monkeypatch):
    import uvicorn

    from curate.serve import app as app_module

    assert resolve_token(ServeOptions(workspace=tmp_path)) is None
    assert resolve_token(ServeOptions(workspace=tmp_path, host="0.0.0.0", token="given")) == "given"
    made = resolve_token(ServeOptions(workspace=tmp_path, host="0.0.0.0"))
    assert (
        made and len(made) >= 24 and made != resolve_token(ServeOptions(workspace=tmp_path, host="10.0.0.5"))
    )
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    said = []
    options = ServeOptions(workspace=tmp_path / "ws", host="0.0.0.0", port=9)
    app_module.serve(options, announce=said.append)
    assert options.token and said == [f"curate serve: http://0.0.0.0:9/review?token={options.token}"]
    assert started["host"] == "0.0.0.0" and started["app"].state.options.token == options.token
    with TestClient(started["app"]) as client:
        assert client.get("/api/counts").status_code == 401
        assert client.get("/api/counts", headers={"X-Curate-Token": options.token}).status_code == 200


def test_stale_half_written_review_parts_are_swept_at_start(ws):
    folder = ws.manifest_dir(REVIEW.name)
    folder.mkdir(parents=True, exist_ok=True)
    exited = subprocess.Popen(["true"])  # a pid whose process has certainly ended
    exited.wait()
    stale = folder / f".part-{time.time_ns():020d}-{exited.pid}-abcdef.parquet.tmp"
    live = folder / f".part-{time.time_ns():020d}-{os.getpid()}-abcdef.parquet.tmp"
    for path in (stale, live):
        path.write_bytes(b"PAR1 half written")
    decided = review.decisions(ws)  # readers skip hidden names
    with TestClient(create_app(ServeOptions(workspace=ws.root))) as client:
        assert client.get("/api/counts").status_code == 200
    assert not stale.exists() and live.exists()  # this process's own writer may still be at work
    live.unlink()
    assert review.decisions(ws) == decided
    assert review_api.sweep_review_tmp(ws) == 0


def test_labels_reach_the_client_as_data(client):
    page = client.get("/api/faces", params={"q": "1boy", "limit": 200}).json()
    nasty = next(f for f in page["faces"] if f["face_id"] == "bad9-0")
    assert NASTY_LABEL in nasty["labels"]  # JSON, shown by the page through textContent only
