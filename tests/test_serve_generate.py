"""The generate API through FastAPI's test client on a copy of the session's colour run: every route,
the pixels against the generator called directly, reproduction from an entry's request, style mixing,
bad input (4xx, nothing written), the token, batching of queued requests and a loop that never blocks."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from curate.serve.app import ServeOptions, create_app
from tests.gan import COLOURS
from train.directions import Directions, edit_ws, save_directions
from train.inference import load_generator, seed_z

LABELS = ["label_0", "label_1", "label_2", "label_3"]


@pytest.fixture(scope="module")
def workspace(colour_run, tmp_path_factory) -> Path:
    """A workspace with two copies of the colour run (`colours` with directions, `again` without)."""
    root = tmp_path_factory.mktemp("serve-ws")
    keep = shutil.ignore_patterns("fakes-*", "reals.png", "playground")
    for name in ("colours", "again"):
        shutil.copytree(colour_run, root / "runs" / name, ignore=keep)
    gen = load_generator(root / "runs" / "colours", device="cpu")
    vectors = torch.nn.functional.normalize(
        torch.randn(2, gen.G.w_dim, generator=torch.Generator().manual_seed(0))
    )
    directions = Directions(["label_0", "label_1"], vectors, torch.ones(2), [0.9, 0.8], {"n": 0})
    save_directions(root / "runs" / "colours", directions)
    return root


@pytest.fixture(scope="module")
def app(workspace):
    return create_app(
        ServeOptions(workspace=workspace, run=workspace / "runs" / "colours", device="cpu", batch=16)
    )


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def generator(workspace):
    return load_generator(workspace / "runs" / "colours", device="cpu")


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pixels(client, entry: dict) -> list[np.ndarray]:
    return [decode(client.get(image["url"]).content) for image in entry["images"]]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def nearest_colour(image: np.ndarray) -> int:
    mean = image.reshape(-1, 3).mean(axis=0) / 127.5 - 1
    return int(np.argmin(((COLOURS - mean) ** 2).sum(axis=1)))


def playground_files(workspace: Path) -> set[str]:
    return {str(p.relative_to(workspace)) for p in workspace.glob("runs/*/playground/**/*")}


def direct(gen, seeds, labels, truncation=0.7, noise_mode="const", edits=None, directions=None):
    """The same images from the TrainedGenerator called directly."""
    ws = gen.ws(seed_z(seeds, gen.z_dim), [gen.labels(labels)] * len(seeds), truncation=truncation)
    if edits:
        ws = edit_ws(ws, directions, edits)
    return [im for batch in gen.images(ws, noise_mode=noise_mode, noise_seeds=seeds) for im in batch]


def test_runs_and_info_name_the_runs_their_labels_snapshots_and_directions(client):
    runs = client.get("/api/runs").json()
    assert [r["name"] for r in runs["runs"]] == ["again", "colours"] and runs["default"] == "colours"
    assert runs["runs"][1]["snapshots"] == ["snapshot-000003.024.pt", "snapshot-000006.pt"]
    info = client.get("/api/runs/colours/info").json()
    assert info["labels"] == LABELS and info["resolution"] == 16 and info["snapshot"] == "snapshot-000006.pt"
    assert [d["name"] for d in info["directions"]] == ["label_0", "label_1"]
    assert info["directions"][0]["accuracy"] == 0.9 and set(info["style_groups"]) == {"coarse", "middle"}
    assert [s["kimg"] for s in info["snapshots"]] == [3.024, 6.0] and info["max_n"] == 64
    older = client.get("/api/runs/again/info", params={"snapshot": "snapshot-000003.024.pt"}).json()
    assert older["snapshot"] == "snapshot-000003.024.pt" and older["directions"] == []


def test_generate_draws_the_labels_as_the_generator_does_and_keeps_an_entry(client, workspace, generator):
    reply = client.post("/api/generate", json={"labels": ["label_2"], "seed": 5, "count": 6})
    assert reply.status_code == 200, reply.text
    entry = reply.json()
    assert (
        entry["request"]["seeds"] == [5, 6, 7, 8, 9, 10]
        and entry["request"]["snapshot"] == "snapshot-000006.pt"
    )
    images = pixels(client, entry)
    assert all(im.shape == (16, 16, 3) for im in images)
    assert np.mean([nearest_colour(im) == 2 for im in images]) >= 0.8  # label_2 is blue
    for got, want in zip(images, direct(generator, list(range(5, 11)), ["label_2"]), strict=True):
        assert np.array_equal(got, want)
    folder = workspace / "runs" / "colours" / "playground" / entry["entry"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{k:03d}.png" for k in range(6)] + ["grid.png", "params.json"]
    assert not list(folder.parent.glob(".*"))  # no temporary folder left
    params = json.loads((folder / "params.json").read_text())
    assert params["images"][3]["sample"]["seed"] == 8 and params["kind"] == "generate"
    assert decode(client.get(entry["grid"]).content).shape == (16, 6 * 16, 3)
    assert client.get(f"/api/playground/{entry['entry']}").json() == entry
    listed = client.get("/api/playground").json()
    assert listed["run"] == "colours" and listed["entries"][0]["entry"] == entry["entry"]
    assert listed["entries"][0]["images"] == 6 and listed["entries"][0]["labels"] == ["label_2"]
    download = client.get(entry["images"][0]["url"], params={"download": 1})
    assert download.headers["content-disposition"] == f'attachment; filename="curate-{entry["entry"]}-0.png"'
    assert download.headers["content-type"] == "image/png"


def test_an_entrys_request_posted_again_makes_the_same_pixels(client, workspace, generator):
    from train.directions import load_directions

    body = {"labels": ["label_1"], "seeds": [3, 11, 40], "noise_mode": "random", "truncation": 0.5,
            "edits": {"label_0": 1.5}}  # fmt: skip
    first = client.post("/api/generate", json=body).json()
    again = client.post("/api/generate", json=first["request"]).json()
    assert again["entry"] != first["entry"] and again["request"] == first["request"]
    for a, b in zip(pixels(client, first), pixels(client, again), strict=True):
        assert np.array_equal(a, b)
    directions = load_directions(workspace / "runs" / "colours")
    want = direct(generator, [3, 11, 40], ["label_1"], 0.5, "random", {"label_0": 1.5}, directions)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(client, first), want, strict=True))
    plain = pixels(client, client.post("/api/generate", json={**body, "edits": {}}).json())
    assert not np.array_equal(plain[0], pixels(client, first)[0])  # the edit moved the face
    # fixed noise, varied tags: row r is label set r, column c is seed c in every row
    grid = client.post(
        "/api/generate", json={"mode": "tags", "rows": [[t] for t in LABELS], "count": 3}
    ).json()
    assert grid["columns"] == 3 and len(grid["images"]) == 12
    tiles = pixels(client, grid)
    assert np.mean([nearest_colour(tiles[k]) == k // 3 for k in range(12)]) >= 0.75
    redo = client.post("/api/generate", json=grid["request"]).json()
    assert all(np.array_equal(a, b) for a, b in zip(tiles, pixels(client, redo), strict=True))


def test_mixing_two_results_swaps_their_style_groups(client, generator):
    source = client.post("/api/generate", json={"labels": ["label_0"], "seeds": [1, 2]}).json()
    mixed = client.post("/api/mix", json={"entry": source["entry"], "a": 0, "b": 1}).json()
    assert [im["caption"] for im in mixed["images"]] == ["A", "B", "A with B's coarse", "A with B's middle"]
    a, b, coarse, middle = pixels(client, mixed)
    first, second = pixels(client, source)
    assert np.array_equal(a, first) and np.array_equal(b, second)
    ws = generator.ws(seed_z([1, 2], generator.z_dim), [[0], [0]], truncation=0.7)
    want = ws[:1].clone()
    want[:, generator.style_groups()["coarse"]] = ws[1:, generator.style_groups()["coarse"]]
    assert np.array_equal(coarse, next(generator.images(want))[0])
    assert not np.array_equal(coarse, a) and not np.array_equal(middle, a)
    again = client.post("/api/mix", json=mixed["request"]).json()
    assert all(
        np.array_equal(x, y) for x, y in zip(pixels(client, mixed), pixels(client, again), strict=True)
    )
    only = client.post(
        "/api/mix", json={"entry": source["entry"], "a": 1, "b": 0, "groups": ["middle"]}
    ).json()
    assert [im["caption"] for im in only["images"]] == ["A", "B", "A with B's middle"]


def test_another_run_or_snapshot_replaces_the_model_and_draws_its_own_images(client):
    body = {"labels": ["label_3"], "seeds": [4, 5]}
    here = pixels(client, client.post("/api/generate", json=body).json())
    there = client.post("/api/generate", json={**body, "run": "again"}).json()
    assert there["run"] == "again" and same(here, pixels(client, there))
    older = client.post("/api/generate", json={**body, "snapshot": "snapshot-000003.024.pt"}).json()
    assert not np.array_equal(pixels(client, older)[0], here[0])
    assert (
        client.get("/api/playground", params={"run": "again"}).json()["entries"][0]["entry"] == there["entry"]
    )


BAD = [
    ("get", "/api/runs/nope/info", None, 404),
    ("get", "/api/runs/..%2Fcolours/info", None, 404),
    ("get", "/api/runs/colours/info?snapshot=../../options.json", None, 404),
    ("get", "/api/playground?run=../colours", None, 404),
    ("get", "/api/playground/20200101-000000-000-abcdef", None, 404),
    ("get", "/api/playground/..%2F..%2Foptions.json", None, 404),
    ("get", "/api/playground/20200101-000000-000-abcdef/0.png", None, 404),
    ("post", "/api/generate", {"run": "../colours"}, 404),
    ("post", "/api/generate", {"run": "/etc"}, 404),
    ("post", "/api/generate", {"snapshot": "../again/snapshot-000006.pt"}, 404),
    ("post", "/api/generate", {"count": 100000}, 422),
    ("post", "/api/generate", {"seeds": list(range(65))}, 422),
    ("post", "/api/generate", {"mode": "tags", "rows": [[], [], []], "count": 22}, 400),
    ("post", "/api/generate", {"mode": "tags"}, 400),
    ("post", "/api/generate", {"rows": [["label_0"]]}, 400),
    ("post", "/api/generate", {"labels": ["labl_2"]}, 400),
    ("post", "/api/generate", {"edits": {"smile": 1.0}}, 400),
    ("post", "/api/generate", {"edits": {"label_0": 100.0}}, 422),
    ("post", "/api/generate", {"truncation": 5}, 422),
    ("post", "/api/generate", {"seed": -1}, 422),
    ("post", "/api/generate", {"noise_mode": "loud"}, 422),
    ("post", "/api/generate", {"mode": "everything"}, 422),
    ("post", "/api/generate", {"path": "/etc/passwd"}, 422),
    ("post", "/api/generate", {"truncation_cutoff": 60}, 400),
    ("post", "/api/generate", "{not json", 422),
    ("post", "/api/generate", {"labels": ["x" * 50] * 2000}, 413),
    ("post", "/api/mix", {"entry": "../../colours", "a": 0, "b": 1}, 404),
    ("post", "/api/mix", {"entry": "20200101-000000-000-abcdef", "a": 0, "b": 1}, 404),
    ("post", "/api/mix", {"a": 0, "b": 1}, 422),
]


def test_bad_input_gets_its_4xx_and_writes_nothing(client, workspace):
    entry = client.post("/api/generate", json={"seeds": [1, 2]}).json()["entry"]
    mixed = client.post("/api/mix", json={"entry": entry, "a": 0, "b": 1}).json()["entry"]
    cases = [
        *BAD,
        ("get", f"/api/playground/{entry}/2.png", None, 404),
        ("get", f"/api/playground/{entry}/params.png", None, 404),
        ("get", f"/api/playground/{entry}/..%2Fparams.json", None, 404),
        ("post", "/api/mix", {"entry": entry, "a": 0, "b": 7}, 404),
        ("post", "/api/mix", {"entry": entry, "a": 0, "b": 1, "groups": ["fine"]}, 400),
        ("post", "/api/mix", {"entry": mixed, "a": 2, "b": 0}, 400),  # a mixed image
    ]
    before = playground_files(workspace)
    for method, path, body, status in cases:
        if isinstance(body, str):
            reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
        else:
            reply = getattr(client, method)(path, **({"json": body} if body is not None else {}))
        assert reply.status_code == status, (path, body, reply.status_code, reply.text)
        # every refusal says why: a JSON detail, or FastAPI's own body limit's plain text
        assert reply.text == "Content Too Large" if status == 413 else reply.json()["detail"], (path, body)
    assert playground_files(workspace) == before
    assert "nearest: label_2" in client.post("/api/generate", json={"labels": ["labl_2"]}).json()["detail"]
    assert (
        "at most 64" in client.post("/api/generate", json={"mode": "tags", "rows": [[]] * 9}).json()["detail"]
    )


def test_a_token_guards_every_generate_route(workspace):
    app = create_app(ServeOptions(workspace=workspace, device="cpu", host="0.0.0.0", token="s3cret"))
    before = playground_files(workspace)
    with TestClient(app) as client:
        for path in ("/api/runs", "/api/runs/colours/info", "/api/playground?run=colours"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-Curate-Token": "wrong"}).status_code == 401
        assert client.post("/api/generate", json={"run": "colours", "seeds": [1]}).status_code == 401
        assert playground_files(workspace) == before
        runs = client.get("/api/runs", headers={"X-Curate-Token": "s3cret"}).json()
        assert runs["default"] is None  # two runs and no --run: the page asks
        made = client.post("/api/generate?token=s3cret", json={"run": "colours", "seeds": [1]}).json()
        assert client.get(made["images"][0]["url"]).status_code == 401
        assert client.get(made["images"][0]["url"] + "?token=s3cret").status_code == 200
        assert client.post("/api/generate?token=s3cret", json={"seeds": [1]}).status_code == 400  # which run?


def test_queued_requests_share_a_forward_and_other_routes_answer_meanwhile(workspace):
    app = create_app(
        ServeOptions(workspace=workspace, run=workspace / "runs" / "again", device="cpu", batch=16)
    )
    with TestClient(app) as client:
        client.post("/api/generate", json={"seeds": [0]})  # the model is loaded
        worker = app.state.generator
        entered, release = threading.Event(), threading.Event()
        images = worker._images

        def slow(model, samples):  # the first forward waits until the test lets it go
            if not release.is_set():
                entered.set()
                assert release.wait(30)
            return images(model, samples)

        worker._images = slow
        replies: dict[int, object] = {}

        def post(k: int, seeds: list[int]) -> None:
            replies[k] = client.post("/api/generate", json={"labels": [LABELS[k % 4]], "seeds": seeds})

        threads = [threading.Thread(target=post, args=(0, [100]))]
        threads[0].start()
        assert entered.wait(30)
        calls = worker.forward_calls
        threads += [
            threading.Thread(target=post, args=(k, [10 * k, 10 * k + 1, 10 * k + 2])) for k in range(1, 6)
        ]
        for thread in threads[1:]:
            thread.start()
        deadline = time.monotonic() + 30
        while len(worker._pending) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(worker._pending) == 5
        # the generator is stuck, yet the loop answers
        start = time.perf_counter()
        assert client.get("/api/runs").status_code == 200
        assert client.get("/api/playground").status_code == 200
        assert time.perf_counter() - start < 5 and 0 not in replies
        release.set()
        for thread in threads:
            thread.join(60)
        assert all(replies[k].status_code == 200 for k in range(6))
        assert [len(replies[k].json()["images"]) for k in range(6)] == [1, 3, 3, 3, 3, 3]
        assert worker.forward_calls - calls == 2  # the stuck one, then all five queued in one forward
        # batching changed no pixel: each request alone makes the same images
        worker._images = images
        alone = client.post("/api/generate", json=replies[3].json()["request"]).json()
        assert same(pixels(client, alone), pixels(client, replies[3].json()))


def test_a_full_queue_is_refused_with_503_and_writes_nothing(client, workspace, monkeypatch):
    from curate.serve import worker

    monkeypatch.setattr(worker, "MAX_QUEUED", 2)
    before = playground_files(workspace)
    reply = client.post("/api/generate", json={"seeds": [1, 2, 3]})
    assert reply.status_code == 503 and "queued" in reply.json()["detail"]
    assert playground_files(workspace) == before
    assert client.post("/api/generate", json={"seeds": [1, 2]}).status_code == 200
