"""Manifest parts: atomic writes, metadata, the newest row of an id wins, resume keys."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from curate import __version__
from curate.manifest import (
    CRAWL,
    CROP,
    FAILED,
    OK,
    SKIPPED,
    TAG_CATEGORIES,
    PartWriter,
    done_keys,
    now_utc,
    part_files,
    part_metadata,
    read_stage,
    write_part,
)


def tag_row(tag: str, category: str) -> dict:
    return {"tag": tag, "category": category, "source": "tag_api", "fetched_at": now_utc()}


def crawl_row(post: int, status: str = OK, error: str | None = None) -> dict:
    return {
        "post_id": f"b:{post}",
        "source": "b",
        "source_id": str(post),
        "status": status,
        "error": error,
        "tags": ["a"],
        "fetched_at": now_utc(),
    }


def test_empty_stage_reads_as_empty_table_with_schema(ws):
    table = read_stage(ws, CRAWL)
    assert table.num_rows == 0
    assert table.schema.names == CRAWL.schema.names
    assert done_keys(ws, CRAWL) == set()


def test_part_carries_stage_version_params_and_completion(ws):
    path = write_part(
        ws, TAG_CATEGORIES, [tag_row("x", "general")], {"query": "a b", "limit": 5}, complete=True
    )
    meta = part_metadata(path)
    assert meta == {**meta, "stage": "tag_categories", "version": __version__, "complete": True, "rows": 1}
    assert meta["params"] == {"query": "a b", "limit": 5}
    assert path.name.startswith("part-") and path.suffix == ".parquet"
    assert pq.read_table(path).schema.field("category").type == TAG_CATEGORIES.schema.field("category").type


def test_hidden_temporary_parts_are_ignored(ws):
    write_part(ws, TAG_CATEGORIES, [tag_row("x", "general")])
    folder = ws.manifest_dir("tag_categories")
    (folder / ".part-999.parquet.tmp").write_bytes(b"half a file")
    assert read_stage(ws, TAG_CATEGORIES)["tag"].to_pylist() == ["x"]
    assert not next(iter(folder.glob(".*"))).name.endswith(".parquet")


def test_pandas_reads_a_manifest_folder_as_the_readme_says(ws):
    import pandas as pd

    write_part(ws, TAG_CATEGORIES, [tag_row("x", "general"), tag_row("y", "artist")])
    write_part(ws, TAG_CATEGORIES, [tag_row("x", "character")])
    (ws.manifest_dir("tag_categories") / ".part-999.parquet.tmp").write_bytes(b"half a file")
    frame = pd.read_parquet(ws.manifest_dir("tag_categories"))
    # every part's rows, the superseded one too; the half-written part is not read
    assert sorted(zip(frame["tag"], frame["category"], strict=True)) == [
        ("x", "character"),
        ("x", "general"),
        ("y", "artist"),
    ]


def test_newest_row_of_an_id_wins_across_parts(ws):
    write_part(ws, TAG_CATEGORIES, [tag_row("x", "general"), tag_row("y", "artist")])
    write_part(ws, TAG_CATEGORIES, [tag_row("x", "character")])
    write_part(ws, TAG_CATEGORIES, [tag_row("z", "copyright")])
    table = read_stage(ws, TAG_CATEGORIES)
    got = dict(zip(table["tag"].to_pylist(), table["category"].to_pylist(), strict=True))
    assert got == {"x": "character", "y": "artist", "z": "copyright"}
    assert table.num_rows == 3


def test_newest_part_of_a_group_replaces_all_its_rows(ws):
    def face(image: str, k: int | None, status: str = OK) -> dict:
        face_id = image if k is None else f"{image}-{k}"
        return {"face_id": face_id, "image_id": image, "status": status, "cropped_at": now_utc()}

    write_part(ws, CROP, [face("a", 0), face("a", 1), face("a", 2), face("b", 0)])
    write_part(ws, CROP, [face("a", 0), face("c", None, SKIPPED)])  # a re-cropped: one face now
    table = read_stage(ws, CROP, columns=["status"])
    assert sorted(table["face_id"].to_pylist()) == ["a-0", "b-0", "c"]  # a-1 and a-2 are gone
    assert table.column_names == ["face_id", "status"]


def test_done_keys_filter_by_status_for_retrying_failures(ws):
    write_part(ws, CRAWL, [crawl_row(1), crawl_row(2, SKIPPED, "rating"), crawl_row(3, FAILED, "http_404")])
    assert done_keys(ws, CRAWL) == {"b:1", "b:2", "b:3"}
    assert done_keys(ws, CRAWL, statuses=(OK, SKIPPED)) == {"b:1", "b:2"}
    write_part(ws, CRAWL, [crawl_row(3, OK)])  # the retry succeeded
    assert done_keys(ws, CRAWL, statuses=(OK, SKIPPED)) == {"b:1", "b:2", "b:3"}


def test_part_writer_flushes_by_rows_and_marks_completion(ws):
    writer = PartWriter(ws, CRAWL, {"query": "q"}, rows_per_part=2)
    for post in range(5):
        writer.add(crawl_row(post))
    assert len(part_files(ws, CRAWL)) == 2
    writer.flush(complete=True, exhausted=True)
    files = part_files(ws, CRAWL)
    assert [part_metadata(f)["rows"] for f in files] == [2, 2, 1]
    assert [part_metadata(f)["complete"] for f in files] == [False, False, True]
    assert part_metadata(files[-1])["params"] == {"query": "q", "exhausted": True}
    assert read_stage(ws, CRAWL).num_rows == 5


def test_a_row_that_breaks_the_schema_is_refused_before_anything_is_written(ws):
    with pytest.raises((TypeError, ValueError)):
        write_part(ws, CRAWL, [{"post_id": "b:1", "status": OK, "width": "wide", "fetched_at": now_utc()}])
    assert part_files(ws, CRAWL) == []
    assert not list(ws.manifest_dir("crawl").glob(".*"))


def test_status_counts_rows_by_status_and_error(ws):
    from curate.status import count_outcomes, format_counts

    rows = [
        crawl_row(1),
        crawl_row(2),
        crawl_row(3, FAILED, "http_404"),
        crawl_row(4, FAILED, "http_404"),
        crawl_row(5, FAILED, "decode_error"),
        crawl_row(6, SKIPPED, "rating"),
    ]
    write_part(ws, CRAWL, rows)
    counts = count_outcomes(ws, CRAWL)
    assert counts.rows == 6
    assert counts.by_status == {"ok": 2, "failed": 3, "skipped": 1}
    assert counts.by_error["failed"] == {"http_404": 2, "decode_error": 1}
    assert format_counts(counts)[1].split() == ["skipped", "1", "(rating", "1)"]
