"""Export round trips: each format read back by the rules its consumers use, selection counts exact."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curate.errors import InvalidArgument
from curate.export.select import SelectOptions
from curate.export.stage import ExportOptions, export_dataset
from curate.manifest import FILTER, TAG, read_stage
from curate.workspace import Workspace
from tests.conftest import REPO, VOCABULARY, curated_workspace


@pytest.fixture(scope="module")
def base(fixtures, tmp_path_factory) -> Workspace:
    return curated_workspace(fixtures, tmp_path_factory.mktemp("export"))


def kept_faces(ws: Workspace) -> dict[str, list[str]]:
    """face id → labels, for the faces the filter kept."""
    keep = {r["face_id"] for r in read_stage(ws, FILTER).to_pylist() if r["keep"]}
    return {r["face_id"]: r["labels"] for r in read_stage(ws, TAG).to_pylist() if r["face_id"] in keep}


def vector(labels: list[str]) -> list[float]:
    return [1.0 if label in labels else 0.0 for label in VOCABULARY]


def nvlabs_read(path: Path) -> tuple[list[np.ndarray], np.ndarray | None, list[str]]:
    """NVlabs' ImageFolderDataset rules for a zip: image names sorted, labels looked up by name."""
    with zipfile.ZipFile(path) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        names = sorted(
            n for n in archive.namelist() if Path(n).suffix.lower() in Image.registered_extensions()
        )
        images = [np.array(Image.open(io.BytesIO(archive.read(n)))) for n in names]
        meta = json.loads(archive.read("dataset.json"))["labels"]
    labels = None
    if meta is not None:
        lookup = dict(meta)
        labels = np.array([lookup[n.replace("\\", "/")] for n in names], dtype=np.float32)
    return images, labels, names


def test_stylegan_zip_reads_as_nvlabs_reads_it(base, tmp_path):
    out = tmp_path / "sg"
    report = export_dataset(
        base.root, ExportOptions("stylegan", out, 64, SelectOptions(validation=0.25), False)
    )
    faces = kept_faces(base)
    held = round(len(faces) * 0.25)
    assert report.counts == {"train": len(faces) - held, "validation": held} and report.filtered
    train, labels, names = nvlabs_read(out / "dataset.zip")
    assert len(train) == report.counts["train"] and names[0] == "00000/img00000000.png"
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in train)
    assert labels.shape == (len(train), len(VOCABULARY))
    valid, valid_labels, _ = nvlabs_read(out / "validation.zip")
    assert len(valid) == held
    # every exported vector is the manifest's labels of one kept face, each face once
    expected = Counter(tuple(vector(labels)) for labels in faces.values())
    assert Counter(map(tuple, np.concatenate([labels, valid_labels]).tolist())) == expected
    record = json.loads((out / "export.json").read_text())
    assert record["labels"] == VOCABULARY and record["counts"] == report.counts
    assert "| 0 | 1girl |" in (out / "README.md").read_text()


def test_parquet_shards_carry_images_labels_and_provenance(base, tmp_path):
    out = tmp_path / "pq"
    report = export_dataset(
        base.root, ExportOptions("parquet", out, 32, SelectOptions(validation=0.0), False)
    )
    frame = pd.read_parquet(out / "data")
    faces = kept_faces(base)
    assert sorted(frame["face_id"]) == sorted(faces) and report.counts["validation"] == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    for row in frame.itertuples():
        assert list(row.labels) == faces[row.face_id] and list(row.label_vector) == vector(faces[row.face_id])
        assert row.md5 == row.face_id.rsplit("-", 1)[0] and row.sources[0].startswith("local:")
        image = Image.open(io.BytesIO(row.image["bytes"]))
        assert image.size == (32, 32) and image.mode == "RGB"
    import pyarrow.parquet as pq

    schema = pq.read_schema(out / "data" / "train-00000-of-00001.parquet")
    assert json.loads(schema.metadata[b"curate.vocabulary"]) == VOCABULARY
    # the datasets library reads its features from here: `image` decodes to a PIL image
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["label_vector"]["length"] == len(VOCABULARY)
    assert set(features) == set(schema.names)


def test_parquet_without_a_vocabulary_reads_back(base, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(base.root, ws)
    (ws / "labels.json").unlink()
    export_dataset(ws, ExportOptions("parquet", tmp_path / "pq", 16, SelectOptions(validation=0.0), False))
    frame = pd.read_parquet(tmp_path / "pq" / "data")  # a fixed-size list of size 0 would not read back
    assert len(frame) == len(kept_faces(base)) and all(len(v) == 0 for v in frame["label_vector"])


def test_parquet_shards_split_by_size(base, tmp_path, monkeypatch):
    import curate.export.stage as stage
    from curate.export import writers

    monkeypatch.setitem(
        stage.WRITERS, "parquet", lambda out, rows, vocab: writers.write_parquet(out, rows, vocab, 1)
    )
    export_dataset(
        base.root, ExportOptions("parquet", tmp_path / "pq", 16, SelectOptions(validation=0.0), False)
    )
    shards = sorted((tmp_path / "pq" / "data").iterdir())
    assert len(shards) == len(kept_faces(base)) and shards[-1].name.endswith(f"-of-{len(shards):05d}.parquet")
    assert len(pd.read_parquet(tmp_path / "pq" / "data")) == len(shards)


def test_imagefolder_metadata(base, tmp_path):
    out = tmp_path / "if"
    export_dataset(base.root, ExportOptions("imagefolder", out, 32, SelectOptions(validation=0.25), False))
    faces = kept_faces(base)
    rows = [
        json.loads(line)
        for split in ("train", "validation")
        for line in (out / split / "metadata.jsonl").open()
    ]
    assert sorted(r["face_id"] for r in rows) == sorted(faces)
    for row in rows:
        assert (out / row["split"] / row["file_name"]).is_file() and row["labels"] == faces[row["face_id"]]
        assert row["label_vector"] == vector(row["labels"])


def test_selection_balance_max_and_min_score(base, tmp_path):
    faces = kept_faces(base)
    girls = sum("1girl" in labels for labels in faces.values())
    boys = len(faces) - girls
    balanced = export_dataset(
        base.root,
        ExportOptions(
            "imagefolder", tmp_path / "b", 16, SelectOptions(balance=["1girl", "1boy"], validation=0), False
        ),
    )
    rows = [json.loads(line) for line in (tmp_path / "b" / "train" / "metadata.jsonl").open()]
    each = min(girls, boys)
    assert Counter("1girl" in r["labels"] for r in rows) == {True: each, False: each}
    assert balanced.dropped["balance_surplus"] == max(girls, boys) - each
    capped = export_dataset(
        base.root, ExportOptions("imagefolder", tmp_path / "m", 16, SelectOptions(max_faces=3), False)
    )
    assert sum(capped.counts.values()) == 3 and capped.dropped["over_max"] == len(faces) - 3
    scored = export_dataset(
        base.root,
        ExportOptions("imagefolder", tmp_path / "s", 16, SelectOptions(min_score=0.55, validation=0), False),
    )
    assert scored.counts["train"] == len(faces) - 3  # filter scores run 0.52, 0.53, … for the kept faces
    with pytest.raises(InvalidArgument, match="no face carries 2girls alone"):
        export_dataset(
            base.root,
            ExportOptions("parquet", tmp_path / "x", 16, SelectOptions(balance=["1girl", "2girls"])),
        )
    with pytest.raises(InvalidArgument, match="power of two"):
        export_dataset(base.root, ExportOptions("stylegan", tmp_path / "x", 100))


def test_same_export_again_is_a_no_op_and_a_failed_one_leaves_the_old(base, tmp_path, monkeypatch):
    out = tmp_path / "sg"
    options = ExportOptions("stylegan", out, 32, SelectOptions(), False)
    export_dataset(base.root, options)
    stamp = (out / "dataset.zip").stat().st_mtime_ns
    again = export_dataset(base.root, options)
    assert again.unchanged and (out / "dataset.zip").stat().st_mtime_ns == stamp

    import curate.export.stage as stage

    def broken(out_dir, rows, vocab):
        next(iter(rows))
        raise OSError("disk full")

    monkeypatch.setitem(stage.WRITERS, "stylegan", broken)
    with pytest.raises(OSError, match="disk full"):
        export_dataset(base.root, ExportOptions("stylegan", out, 64, SelectOptions(), False))
    assert (out / "dataset.zip").stat().st_mtime_ns == stamp  # the finished export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["sg"]  # and no temporary folder is left


def test_cli(base, tmp_path):
    command = [
        sys.executable, "-m", "curate", "export", "-w", str(base.root), "--format", "stylegan", "--out",
        str(tmp_path / "sg"), "--resolution", "32", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "faces (kept by the filter), 3 labels" in done.stdout and "left out 2: filtered_out" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "already this export" in again.stdout


def test_an_unreadable_crop_is_a_clear_error_and_nothing_lands(base, tmp_path):
    import shutil

    from curate.errors import CurateError

    ws = tmp_path / "ws"
    shutil.copytree(base.root, ws)
    face = sorted(kept_faces(base))[0]
    crop = next(ws.glob(f"crops/*/{face}.png"))
    crop.write_bytes(b"not a png")
    with pytest.raises(CurateError, match=f"the crop of {face} .* does not open"):
        export_dataset(ws, ExportOptions("stylegan", tmp_path / "sg", 16, SelectOptions(), False))
    assert not (tmp_path / "sg").exists() and not list(tmp_path.glob(".sg.*"))
