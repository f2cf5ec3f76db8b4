"""The filter stage on embeddings made to order: the vote, mining, the threshold, dedup, seeds, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from curate.errors import InvalidArgument
from curate.manifest import CROP, EMBED, FILTER, TAG, now_utc, read_stage, write_part
from curate.workspace import Workspace
from embed.filter import FilterOptions, filter_faces, vote
from embed.threshold import choose_threshold
from tests.conftest import REPO


def cluster(centre: np.ndarray, count: int, spread: float, rng) -> np.ndarray:
    """Unit vectors scattered around a unit centre (spread 0.15 in 16-d: cosine about 0.85 to it)."""
    centre = centre / np.linalg.norm(centre)
    points = centre + spread * rng.normal(size=(count, len(centre)))
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture
def mixed(tmp_path) -> Workspace:
    """60 'faces' near one centre (good) and 40 elsewhere (bad), plus an exact copy of good-0."""
    rng = np.random.default_rng(0)
    dim = 16
    good = cluster(rng.normal(size=dim), 60, 0.15, rng)
    bad = np.concatenate(
        [cluster(rng.normal(size=dim), 20, 0.15, rng), cluster(rng.normal(size=dim), 20, 0.3, rng)]
    )
    vectors = np.concatenate([good, bad, good[:1]])
    names = [f"good{i}" for i in range(60)] + [f"bad{i}" for i in range(40)] + ["copy0"]
    ws = Workspace.open(tmp_path / "ws")
    stamp = now_utc()
    sides = {"good0": 100.0, "copy0": 300.0}  # the copy comes from the larger source
    write_part(
        ws,
        CROP,
        [
            {"face_id": f"{n}-0", "image_id": n, "status": "ok", "face_x0": 0.0, "face_y0": 0.0,
             "face_x1": sides.get(n, 200.0), "face_y1": sides.get(n, 200.0), "score": 1.0,
             "cropped_at": stamp}
            for n in names
        ],
    )  # fmt: skip
    write_part(
        ws,
        EMBED,
        [
            {"face_id": f"{n}-0", "image_id": n, "status": "ok", "model": "test", "embedding": v.tolist(),
             "embedded_at": stamp}
            for n, v in zip(names, vectors, strict=True)
        ],
    )  # fmt: skip
    labels = [["solo", "portrait"] if n in ("good1", "good2", "good3") else ["solo"] for n in names]
    write_part(
        ws,
        TAG,
        [
            {"face_id": f"{n}-0", "image_id": n, "status": "ok", "labels": tags, "tagged_at": stamp}
            for n, tags in zip(names, labels, strict=True)
        ],
    )  # fmt: skip
    return ws


def rows(ws: Workspace) -> dict[str, dict]:
    return {r["face_id"]: r for r in read_stage(ws, FILTER).to_pylist()}


def precision_recall(result: dict[str, dict]) -> tuple[float, float]:
    kept = [f for f, r in result.items() if r["keep"]]
    true = sum(f.startswith(("good", "copy")) for f in kept)
    return true / len(kept), true / 61


def test_few_seeds_filter_the_mix_mine_and_choose_a_threshold(mixed):
    seeds = FilterOptions(good=[f"good{i}-0" for i in range(5)], bad=[f"bad{i}-0" for i in (0, 1, 2, 20, 21)])
    report = filter_faces(mixed.root, seeds)
    result = rows(mixed)
    assert len(result) == 101 and report.faces == 101
    assert (
        report.good_seeds == 5 and report.bad_seeds == 5 and report.mined_good > 20 and report.mined_bad > 10
    )
    precision, recall = precision_recall(result)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)  # the input is 61% good
    assert report.estimated_precision is not None and report.estimated_precision >= 0.9
    assert result["bad0-0"]["error"] == "bad_seed" and result["good0-0"]["seed"] == "good"
    dropped = [r for r in result.values() if r["error"] == "low_score"]
    assert dropped and all(r["score"] < report.threshold for r in dropped)
    assert all(r["nearest_seeds"] for r in result.values())
    assert 0.5 < report.nearest_similarity < 0.97 and not report.collapsed


def test_a_collapsed_embedding_is_reported(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    rng = np.random.default_rng(1)
    vectors = cluster(rng.normal(size=8), 30, 0.01, rng)  # everything nearly the same direction
    stamp = now_utc()
    write_part(
        ws,
        CROP,
        [{"face_id": f"f{i}", "image_id": f"f{i}", "status": "ok", "cropped_at": stamp} for i in range(30)],
    )
    write_part(
        ws,
        EMBED,
        [
            {"face_id": f"f{i}", "image_id": f"f{i}", "status": "ok", "model": "m", "embedding": v.tolist(),
             "embedded_at": stamp}
            for i, v in enumerate(vectors)
        ],
    )  # fmt: skip
    report = filter_faces(ws.root, FilterOptions(good=["f0", "f1"], dedup=None))
    assert report.collapsed and report.nearest_similarity > 0.99


def test_near_duplicates_keep_the_larger_source(mixed):
    # these crops have no pixels: the embedding alone decides (the pixel check is tested on real copies)
    filter_faces(
        mixed.root, FilterOptions(good=["good1-0"], bad=["bad1-0"], threshold=0.5, dedup_pixels=None)
    )
    result = rows(mixed)
    assert result["good0-0"]["dup_of"] == "copy0-0" and result["good0-0"]["error"] == "duplicate"
    assert result["copy0-0"]["keep"] and result["copy0-0"]["dup_group"] == "copy0-0"
    assert (
        result["good0-0"]["dup_group"] == "copy0-0"
        and "near-duplicate of copy0-0" in result["good0-0"]["message"]
    )
    assert sum(r["dup_of"] is not None for r in result.values()) == 1
    filter_faces(mixed.root, FilterOptions(good=["good1-0"], bad=["bad1-0"], threshold=0.5, dedup=None))
    assert rows(mixed)["good0-0"]["keep"]


def test_good_seeds_only_and_tag_queries(mixed):
    report = filter_faces(mixed.root, FilterOptions(good_query="solo portrait", target_precision=0.9))
    assert report.good_seeds == 3 and report.bad_seeds == 0 and report.estimated_precision is None
    assert report.mined_good > 10 and report.mined_bad == 0
    precision, _ = precision_recall(rows(mixed))
    assert precision >= 0.9


def test_vote_and_threshold_by_hand():
    label = np.array([1, 0, -1, 1])
    neighbours = np.array([[2, 0, 1], [2, 3, -1]])
    similarities = np.array([[1.0, 0.9, 0.8], [1.0, 0.7, 0.0]])
    scores = vote(similarities, neighbours, label)
    w_good, w_bad = np.exp((0.9 - 1) / 0.07), np.exp((0.8 - 1) / 0.07)
    assert scores[0] == pytest.approx(w_good / (w_good + w_bad)) and scores[1] == pytest.approx(1.0)

    loo = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    seeds = np.array([1, 1, 0, 1, 0])
    # precision from the top: 1, 1, 2/3, 3/4, 3/5: the lowest cut at ≥ 0.75 keeps 0.6, drops 0.5
    assert choose_threshold(loo, seeds, 0.75, good_only=False) == (
        pytest.approx(0.55), pytest.approx(0.75), True,
    )  # fmt: skip
    assert choose_threshold(loo[[0, 1, 3]], np.array([1, 1, 1]), 0.5, good_only=True)[:2] == (
        pytest.approx(0.8), None,
    )  # fmt: skip
    # equal scores stand or fall together: a good and a bad seed tied at the top are precision 1/2
    tied, tied_seeds = np.array([1.0, 1.0, 0.9, 0.8]), np.array([1, 0, 1, 1])
    assert choose_threshold(tied, tied_seeds, 0.75, good_only=False) == (0.8, 0.75, True)
    # no cut reaches 0.9: the majority vote, with the seeds' precision at it (1 good of 3 at ≥ 0.5)
    low, low_seeds = np.array([1.0, 1.0, 0.6, 0.4]), np.array([1, 0, 0, 1])
    assert choose_threshold(low, low_seeds, 0.9, good_only=False) == (0.5, pytest.approx(1 / 3), False)


def test_bad_seeds_are_clear_errors(mixed):
    with pytest.raises(InvalidArgument, match="not embedded faces: nobody"):
        filter_faces(mixed.root, FilterOptions(good=["nobody"]))
    with pytest.raises(InvalidArgument, match="at least one good seed"):
        filter_faces(mixed.root, FilterOptions(bad=["bad1-0"]))


def test_cli(mixed):
    command = [
        sys.executable, "-m", "curate", "filter", "-w", str(mixed.root), "--good", "good1-0,good2-0",
        "--good", "good3-0", "--bad", "bad1-0,bad2-0,bad21-0", "--dedup-pixels", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "of 101 faces kept; seeds 3 good, 3 bad" in done.stdout and "dropped 1: duplicate" in done.stdout


def test_the_pixel_check_confirms_copies_only(fixtures, tmp_path):
    from PIL import Image

    from embed.dedup import PixelCheck

    faces = sorted((fixtures / "images" / "faces").glob("*.jpg"))[:2]
    with Image.open(faces[0]) as image:
        original = image.convert("RGB").resize((200, 200))
    with Image.open(faces[1]) as image:
        other = image.convert("RGB").resize((200, 200))
    files = {
        "original": (original, "PNG"),
        "jpeg": (original, "JPEG"),
        "small": (original.resize((90, 90), Image.Resampling.LANCZOS), "PNG"),
        "other": (other, "PNG"),
        "white": (Image.new("RGB", (50, 50), "white"), "PNG"),
        "white2": (Image.new("RGB", (80, 80), (250, 250, 250)), "JPEG"),
        "black": (Image.new("RGB", (50, 50), "black"), "PNG"),
    }
    paths = []
    for name, (image, kind) in files.items():
        paths.append(tmp_path / f"{name}.{kind.lower()}")
        image.save(paths[-1], format=kind, quality=70)
    paths.append(tmp_path / "missing.png")
    check = PixelCheck(paths, 0.8)
    assert check(0, 1) and check(0, 2) and check(1, 2)  # re-encoded and downsized copies
    assert not check(0, 3) and not check(2, 3)  # another drawing
    assert check(4, 5) and not check(4, 6) and not check(0, 4)  # blank crops match blank crops of their grey
    assert not check(0, 7) and not check(7, 7)  # a file that does not open matches nothing


def test_roc_auc_by_hand():
    from curate.metrics import roc_auc

    # positives 0.9 and 0.5 against negatives 0.5 and 0.1: pairs won 1, 1, ½ (a tie), 1 of 4
    assert roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False])) == 0.875


def _ten_with_examples(fixtures, tmp_path) -> tuple[Workspace, list[tuple[str, str]], Path]:
    """The ten illustrations cropped and embedded (a tiny network), and a folder holding exact copies
    of the first three crops."""
    import shutil

    from embed.stage import EmbedOptions, embed_faces
    from embed.train import EmbedTrainOptions
    from tests.conftest import TEN_ILLUSTRATIONS, cascade_workspace

    ws = cascade_workspace(fixtures, tmp_path, TEN_ILLUSTRATIONS)
    train = EmbedTrainOptions(
        backbone="test_resnet", dim=16, size=48, batch_size=4, device="cpu", workers=0, epochs=1,
        progress=False,
    )  # fmt: skip
    embed_faces(ws.root, EmbedOptions(train=train, progress=False))
    crops = sorted((r["face_id"], r["path"]) for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok")
    examples = tmp_path / "examples"
    examples.mkdir()
    for face, path in crops[:3]:  # the crops themselves: each example is its face's exact copy
        shutil.copy(ws.root / path, examples / f"{face}.png")
    return ws, crops, examples


def test_good_example_folders_without_bad_seeds(fixtures, tmp_path):
    """`--good FOLDER` alone (no bad seeds), and with face ids beside it: the good-seeds-only path."""
    ws, crops, examples = _ten_with_examples(fixtures, tmp_path)
    # no mining rounds: a face mined good is its own nearest labelled face, and scores 1 too
    report = filter_faces(ws.root, FilterOptions(good=[str(examples)], k=1, rounds=0, dedup=None))
    result = rows(ws)
    assert report.faces == len(crops) == len(result) and report.bad_seeds == 0 and report.good_seeds == 3
    assert set(result) == {face for face, _ in crops}  # the examples are seeds, never rows
    assert all(r["seed"] is None for r in result.values())  # the faces copied are not seeds themselves
    # each copied face's nearest seed is its own copy (the examples in name order), at similarity 1
    for n, (face, _) in enumerate(crops[:3]):
        assert result[face]["nearest_seeds"][0] == f"example:{n}"
        assert result[face]["score"] == pytest.approx(1.0, abs=1e-5) and result[face]["keep"]
    assert max(result[face]["score"] for face, _ in crops[3:]) < 1 - 1e-4

    both = filter_faces(ws.root, FilterOptions(good=[str(examples), crops[5][0]], dedup=None))
    result = rows(ws)
    assert both.good_seeds == 4 and both.bad_seeds == 0
    assert result[crops[5][0]]["seed"] == "good" and result[crops[5][0]]["keep"]

    command = [sys.executable, "-m", "curate", "filter", "-w", str(ws.root), "--good", str(examples)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"of {len(crops)} faces kept; seeds 3 good, 0 bad" in done.stdout


def test_the_learned_score_reads_the_examples_shapes_as_their_crops(fixtures, tmp_path, monkeypatch):
    """A folder's examples get the crop descriptors (embed/shape.py) of their own pixels: an exact copy
    of a crop is described exactly as that crop, where it once read as unknown."""
    import embed.filter

    ws, crops, examples = _ten_with_examples(fixtures, tmp_path)
    seen = {}
    signals = embed.filter.signals

    def spy(*args):
        seen["shapes"] = args[-1]
        return signals(*args)

    monkeypatch.setattr(embed.filter, "signals", spy)
    bad = [face for face, _ in crops[-2:]]
    report = filter_faces(ws.root, FilterOptions(good=[str(examples)], bad=bad, score="learned", dedup=None))
    assert report.score == "learned" and report.good_seeds == 3 and report.bad_seeds == 2
    faces = len(crops)
    from embed.stage import read_embeddings

    order = {face: row for row, face in enumerate(read_embeddings(ws, None)[0])}
    for name, rows in seen["shapes"].items():
        assert rows.shape[0] == faces + 3 and np.isfinite(rows).all(), name
        for n, (face, _) in enumerate(crops[:3]):
            assert np.array_equal(rows[faces + n], rows[order[face]]), (name, face)
