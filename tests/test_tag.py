"""The tag stage on fixture crops: a row per face, labels with provenance, failures, resume, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from curate.errors import InvalidArgument
from curate.manifest import CRAWL, CROP, TAG, part_files, part_metadata, read_stage
from curate.shard import Shard
from curate.workspace import Workspace
from detect.tags.tag import TagOptions, tag_faces
from tests.conftest import REPO, cascade_workspace
from tests.taggers import make_model, probability, save_wd_folder

# one face each (from the crop tests); the first carries a booru sidecar
IMAGES = ("pundo__imgs_3.jpg", "rp__imgs_dsample1.jpg", "rp__imgs_ptutorial5.png")
SIDECAR = {"tags_general": "blue_eyes school_uniform", "tags_character": "saber", "tags_artist": "someone"}


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory) -> Path:
    return save_wd_folder(make_model(), tmp_path_factory.mktemp("wd") / "tagger")


@pytest.fixture
def ws(fixtures, tmp_path) -> Workspace:
    return cascade_workspace(fixtures, tmp_path, IMAGES, {IMAGES[0]: SIDECAR})


def options(folder: Path, **overrides) -> TagOptions:
    return TagOptions(**{"model": folder, "device": "cpu", "batch_size": 2, "progress": False, **overrides})


def image_names(ws: Workspace) -> dict[str, str]:
    return {r["image_id"]: Path(r["source_id"]).name for r in read_stage(ws, CRAWL).to_pylist()}


def test_every_face_gets_tags_scores_and_provenance(ws, tagger_folder):
    faces = [r for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"]
    assert len(faces) >= 4  # the ptutorial image has two
    report = tag_faces(ws.root, options(tagger_folder, workers=1))
    assert report.faces == len(faces) and report.outcomes == {("ok", None): len(faces)}
    assert report.labels == {"1girl": len(faces), "blue_eyes": len(faces)}

    rows = {r["face_id"]: r for r in read_stage(ws, TAG).to_pylist()}
    assert set(rows) == {f["face_id"] for f in faces}
    names = image_names(ws)
    for row in rows.values():
        assert row["status"] == "ok" and row["model"] == str(tagger_folder)
        assert row["tags_general"] == ["1girl", "blue_eyes"] and row["tags_character"] == ["hatsune_miku"]
        assert row["rating"] == "general"
        assert row["rating_score"] == pytest.approx(probability("general"), abs=1e-5)
        assert row["scored_tags"] == ["1girl", "hatsune_miku", "saber", "blue_eyes", "smile"]
        assert row["scores"] == pytest.approx([probability(t) for t in row["scored_tags"]], abs=1e-5)
        if names[row["image_id"]] == IMAGES[0]:
            assert row["booru_general"] == ["blue_eyes", "school_uniform"]
            assert row["booru_character"] == ["saber"] and row["booru_artist"] == ["someone"]
            assert row["labels"] == ["1girl", "blue_eyes", "hatsune_miku", "school_uniform", "saber"]
            assert row["label_sources"] == ["tagger", "both", "tagger", "booru", "booru"]
        else:
            assert row["booru_general"] == [] and row["labels"] == ["1girl", "blue_eyes", "hatsune_miku"]
            assert row["label_sources"] == ["tagger"] * 3
    params = part_metadata(part_files(ws, TAG)[-1])["params"]
    assert params["general"] == 0.35 and params["character"] == 0.85 and params["input_size"] == 64


def test_failures_resume_retry_force_and_shards(ws, tagger_folder):
    faces = [r for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"]
    broken = ws.root / faces[0]["path"]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    first = tag_faces(ws.root, options(tagger_folder, shard=Shard(0, 2)))
    second = tag_faces(ws.root, options(tagger_folder, shard=Shard(1, 2)))
    assert first.faces + second.faces == len(faces)
    rows = {r["face_id"]: r for r in read_stage(ws, TAG).to_pylist()}
    assert rows[faces[0]["face_id"]]["status"] == "failed"
    assert rows[faces[0]["face_id"]]["error"] == "decode_error"
    assert sum(r["status"] == "ok" for r in rows.values()) == len(faces) - 1

    assert tag_faces(ws.root, options(tagger_folder)).faces == 0  # resume: nothing left
    shutil.copy(ws.root / faces[1]["path"], broken)  # the crop is repaired
    retried = tag_faces(ws.root, options(tagger_folder, retry_failed=True))
    assert retried.faces == 1 and retried.outcomes == {("ok", None): 1}
    assert {r["status"] for r in read_stage(ws, TAG).to_pylist()} == {"ok"}
    assert tag_faces(ws.root, options(tagger_folder, force=True)).faces == len(faces)


def test_the_stage_needs_crops(tmp_path, tagger_folder):
    with pytest.raises(InvalidArgument, match="curate crop"):
        tag_faces(tmp_path / "empty", options(tagger_folder))


def test_cli_tags_and_reports(ws, tagger_folder):
    def curate(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "curate", "tag", "-w", str(ws.root), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)

    done = curate("--model", str(tagger_folder), "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "tag: " in done.stdout and "most given: 1girl:" in done.stdout
    assert "nothing to do" in curate("--model", str(tagger_folder)).stdout
    bad = curate("--model", str(tagger_folder), "--force", "--floor", "0.9")
    assert bad.returncode == 2 and "floor" in bad.stderr and "Traceback" not in bad.stderr
    offline = curate("--model", "SmilingWolf/wd-vit-tagger-v3", "--force")
    assert offline.returncode == 1 and "not in the cache" in offline.stderr
