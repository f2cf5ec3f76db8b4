"""`curate ingest`: a local folder into the crawl manifest, with sidecar tags, resumable."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from crawl.local import ingest_folder, parse_tag_text, read_sidecar
from curate.errors import InvalidArgument
from curate.manifest import CRAWL, TAG_CATEGORIES, read_stage
from tests.conftest import CORRUPT


@pytest.fixture
def dataset(tmp_path, face_images, noise_images):
    """A Kaggle-style folder: nested, with .txt and gallery-dl .json sidecars and non-image files."""
    root = tmp_path / "dataset"
    (root / "a" / "b").mkdir(parents=True)
    for i, src in enumerate(face_images[:6] + [n for n in noise_images if n.name in CORRUPT]):
        shutil.copy(src, (root / ("a/b" if i % 2 else "a")) / src.name)
    first = sorted((root / "a").glob("*.*"))[0]
    first.with_suffix(".txt").write_text("long hair, blue eyes,  smile\n")
    second = sorted((root / "a" / "b").glob("*.*"))[0]
    second.with_name(second.name + ".json").write_text(
        json.dumps(
            {
                "tags_character": ["hatsune_miku"],
                "tags_general": "1girl twintails",
                "tags_artist": ["someone"],
                "rating": "s",
                "score": 12,
            }
        )
    )
    (root / "notes.md").write_text("not an image")
    return root, first, second


def test_ingest_rows_files_tags_and_resume(dataset, ws):
    root, first, second = dataset
    report = ingest_folder(root, ws.root, progress=False)
    table = read_stage(ws, CRAWL).to_pylist()
    assert report.listed == len(table) == 10
    by_name = {row["source_id"].rsplit("/", 1)[-1]: row for row in table}
    for name, row in by_name.items():
        assert row["source"] == "local" and row["query"] == str(root)
        if name in CORRUPT:
            assert (row["status"], row["error"]) == ("failed", "decode_error")
            continue
        assert row["status"] == "ok"
        stored = ws.root / row["path"]
        assert hashlib.md5(stored.read_bytes()).hexdigest() == row["image_id"]
        assert stored.name.split(".")[0] == row["image_id"]
    assert by_name[first.name]["tags"] == ["long_hair", "blue_eyes", "smile"]
    miku = by_name[second.name]
    assert miku["tags_character"] == ["hatsune_miku"] and miku["tags_artist"] == ["someone"]
    assert sorted(miku["tags_general"]) == ["1girl", "twintails"]
    assert (miku["rating"], miku["score"]) == ("general", 12)
    categories = read_stage(ws, TAG_CATEGORIES).to_pylist()
    assert {r["tag"]: r["category"] for r in categories}["hatsune_miku"] == "character"

    again = ingest_folder(root, ws.root, progress=False)
    assert again.written == 0 and again.already_done == 10
    assert read_stage(ws, CRAWL).num_rows == 10


def test_ingest_refuses_a_missing_folder_and_the_workspace_itself(ws, tmp_path):
    with pytest.raises(InvalidArgument, match="not a folder"):
        ingest_folder(tmp_path / "nope", ws.root, progress=False)
    with pytest.raises(InvalidArgument, match="inside the workspace"):
        ingest_folder(ws.root, ws.root, progress=False)


def test_tag_text_styles():
    assert parse_tag_text("1girl solo  long_hair\n") == ["1girl", "solo", "long_hair"]
    assert parse_tag_text("1girl, long hair,\nsmile, smile") == ["1girl", "long_hair", "smile"]


def test_sidecar_prefers_json_and_reads_danbooru_strings(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    (tmp_path / "x.txt").write_text("ignored")
    (tmp_path / "x.json").write_text(
        json.dumps({"tag_string": "a b", "tag_string_character": "b", "rating": "q"})
    )
    sidecar = read_sidecar(image)
    assert sidecar.tags == ["a", "b"] and sidecar.categories == {"b": "character"}
    assert sidecar.rating == "questionable"


def test_ingest_keeps_a_bounded_window_of_files_in_flight():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from crawl.local import _in_order

    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * 2

    with ThreadPoolExecutor(2) as pool:
        results = _in_order(pool, work, list(range(100)), window=4)
        first = next(results)
        assert first == (0, 0)
        assert len(started) <= 4  # nothing beyond the window was submitted
        assert list(results) == [(i, 2 * i) for i in range(1, 100)]
