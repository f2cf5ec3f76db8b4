"""The review manifest: durable decisions, undo as a stack, compaction, and review seeds in the filter."""

from __future__ import annotations

import pytest

from curate import review
from curate.errors import InvalidArgument
from curate.manifest import FILTER, REVIEW, part_files, part_metadata, read_stage
from embed.filter import FilterOptions, filter_faces
from tests.test_filter import mixed  # noqa: F401 - the fixture


def test_decisions_stand_newest_last_and_undo_walks_back(tmp_path):
    from curate.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    review.decide(ws, "abc-0", "abc", "good")
    review.decide(ws, "abc-0", "abc", "bad")
    review.decide(ws, "def-1", "def", "skip")
    assert review.decisions(ws) == {"abc-0": "bad", "def-1": "skip"}
    assert review.undo(ws, "abc-0", "abc").decision == "good"
    assert review.decisions(ws)["abc-0"] == "good"
    assert review.undo(ws, "abc-0", "abc").decision is None
    assert review.decisions(ws) == {"def-1": "skip"}  # every decision on abc-0 taken back
    with pytest.raises(InvalidArgument, match="no decision to undo"):
        review.undo(ws, "abc-0", "abc")
    assert len(part_files(ws, REVIEW)) == 5  # one part per decision, each whole on disk


def test_ids_and_decisions_are_checked(tmp_path):
    from curate.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    for bad_id in ("../etc/passwd-0", "abc", "a/b-0", "abc-0.png", "x" * 70 + "-0"):
        with pytest.raises(InvalidArgument, match="not a face id"):
            review.decide(ws, bad_id, "abc", "good")
    with pytest.raises(InvalidArgument, match="one of good, bad, skip"):
        review.decide(ws, "abc-0", "abc", "maybe")
    assert part_files(ws, REVIEW) == []


def test_compaction_keeps_every_row_once(tmp_path, monkeypatch):
    from curate.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    monkeypatch.setattr(review, "COMPACT_AFTER", 4)
    for n in range(4):
        review.decide(ws, f"f{n}-0", f"f{n}", "good")
    review.decide(ws, "f0-0", "f0", "bad")  # the fifth part: compacted into one
    assert len(part_files(ws, REVIEW)) == 1
    assert part_metadata(part_files(ws, REVIEW)[0])["rows"] == 5
    assert review.history(ws, "f0-0") == ["good", "bad"]
    # a compaction cut short after writing the merged part: rows are in two parts, counted once
    merged = part_files(ws, REVIEW)[0]
    (merged.parent / f"part-0{merged.name[5:]}").write_bytes(merged.read_bytes())
    assert review.history(ws, "f0-0") == ["good", "bad"]
    assert review.undo(ws, "f0-0", "f0").decision == "good"


def test_the_filter_takes_reviewed_faces_as_seeds(mixed):  # noqa: F811
    filter_faces(mixed.root, FilterOptions(good=["good1-0"], bad=["bad1-0"], dedup=None))
    for n in (2, 3, 4, 5):
        review.decide(mixed, f"good{n}-0", f"good{n}", "good")
        review.decide(mixed, f"bad{n}-0", f"bad{n}", "bad")
    review.decide(mixed, "good1-0", "good1", "bad")  # a person overrides a CLI seed
    review.decide(mixed, "bad6-0", "bad6", "skip")
    report = filter_faces(mixed.root, FilterOptions(good=["good1-0"], bad=["bad1-0"], dedup=None))
    rows = {r["face_id"]: r for r in read_stage(mixed, FILTER).to_pylist()}
    assert (report.good_seeds, report.bad_seeds) == (4, 6)
    assert rows["good1-0"]["seed"] == "bad" and rows["good3-0"]["seed"] == "good"
    assert rows["bad6-0"]["seed"] is None  # a skip is no seed
    params = part_metadata(part_files(mixed, FILTER)[-1])["params"]
    assert FilterOptions.from_params(params) == FilterOptions(good=["good1-0"], bad=["bad1-0"], dedup=None)
    without = filter_faces(mixed.root, FilterOptions(good=["good1-0"], bad=["bad1-0"], review=False))
    assert (without.good_seeds, without.bad_seeds) == (1, 1)


def test_the_queue_shows_undecided_faces_nearest_the_threshold_first(mixed):  # noqa: F811
    filter_faces(mixed.root, FilterOptions(good=["good1-0", "good2-0"], bad=["bad1-0", "bad2-0"]))
    rows = {r["face_id"]: r for r in read_stage(mixed, FILTER).to_pylist()}
    threshold = part_metadata(part_files(mixed, FILTER)[-1])["params"]["threshold"]
    queue = review.review_queue(mixed, 10)
    gaps = [abs(rows[f]["score"] - threshold) for f in queue]
    assert gaps == sorted(gaps) and not {"good1-0", "bad2-0"} & set(queue)
    review.decide(mixed, queue[0], queue[0].rsplit("-", 1)[0], "skip")
    assert review.review_queue(mixed, 10)[0] == queue[1]
