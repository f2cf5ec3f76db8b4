"""Weighted kNN on held-out faces: an embedding that follows the tags scores far above chance."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from curate.manifest import TAG, now_utc, write_part
from curate.workspace import Workspace
from embed.evaluate import knn_label_map


def tagged(tmp_path, count: int = 300) -> tuple[Workspace, list[str], list[int]]:
    ws = Workspace.open(tmp_path / "ws")
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, count).tolist()  # three kinds of face, each with its own tag
    names = ("red_hair", "blue_hair", "green_hair")
    ids = [f"img{i}-0" for i in range(count)]
    rows = [
        {
            "face_id": f,
            "image_id": f[:-2],
            "status": "ok",
            "labels": ["solo", names[k]],
            "tagged_at": now_utc(),
        }
        for f, k in zip(ids, kinds, strict=True)
    ]
    write_part(ws, TAG, rows)
    return ws, ids, kinds


def test_an_embedding_that_follows_the_tags_beats_chance(tmp_path):
    ws, ids, kinds = tagged(tmp_path)
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:3]
    vectors = centres[kinds] + 0.2 * rng.normal(size=(len(ids), 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    report = knn_label_map(ws, ids, vectors.astype(np.float32))
    assert report is not None and report.labels == 4 and 30 < report.held_out < 100
    assert report.map > 0.95 and report.chance < 0.6

    noise = rng.normal(size=(len(ids), 8)).astype(np.float32)
    blind = knn_label_map(ws, ids, noise / np.linalg.norm(noise, axis=1, keepdims=True))
    assert blind.map < report.map - 0.25


def test_no_tags_no_figure(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    assert knn_label_map(ws, ["a-0", "b-0"], np.eye(2, dtype=np.float32)) is None
