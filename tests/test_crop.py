"""The crop stage on the real fixtures: faces found, noise rejected, square padded crops, failures, resume."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crawl.local import ingest_folder
from curate.errors import InvalidArgument
from curate.manifest import CRAWL, CROP, read_stage
from curate.shard import Shard
from curate.workspace import Workspace
from detect.faces.boxes import Box, iou
from detect.faces.crop import CropOptions, DetectorSpec, crop_images
from detect.faces.geometry import CropSettings
from tests.conftest import REPO

REJECTED_KINDS = {"non_human", "scenery", "real_photo"}


def options(fixtures: Path, **overrides) -> CropOptions:
    spec = DetectorSpec(model=fixtures / "models" / "lbpcascade_animeface.xml")
    return CropOptions(**{"detector": spec, "progress": False, **overrides})


def rows_by_file(ws: Workspace) -> dict[str, list[dict]]:
    """Crop rows grouped by the original's file name (from the ingest manifest)."""
    names = {r["image_id"]: Path(r["source_id"]).name for r in read_stage(ws, CRAWL).to_pylist()}
    grouped: dict[str, list[dict]] = {}
    for row in read_stage(ws, CROP).to_pylist():
        grouped.setdefault(names[row["image_id"]], []).append(row)
    return grouped


def fixture_notes(fixtures: Path) -> dict[str, str]:
    with open(fixtures / "manifest.csv", newline="") as handle:
        return {Path(r["file"]).name: r["notes"] for r in csv.DictReader(handle) if r["kind"] != "model"}


@pytest.fixture(scope="module")
def cropped(fixtures, tmp_path_factory):
    """Every fixture ingested and cropped once with the default settings, in worker processes."""
    ws = Workspace.open(tmp_path_factory.mktemp("crop") / "ws")
    ingest_folder(fixtures / "images", ws.root, progress=False)
    report = crop_images(ws.root, options(fixtures, workers=2))
    return ws, report, rows_by_file(ws)


def test_faces_in_most_illustrations_and_none_in_photos_animals_scenery(cropped, fixtures, face_images):
    _, report, rows = cropped
    with_face = [p.name for p in face_images if any(r["status"] == "ok" for r in rows[p.name])]
    assert len(with_face) / len(face_images) >= 0.65
    notes = fixture_notes(fixtures)
    rejected = [name for name, note in notes.items() if note.split(":")[0] in REJECTED_KINDS]
    assert len(rejected) >= 20
    for name in rejected:
        assert [r["error"] for r in rows[name]] == ["no_face"], name
    assert report.faces == sum(r["status"] == "ok" for rs in rows.values() for r in rs)


def test_boxes_agree_with_the_cascade_readme_for_faces_above_min_face(cropped, fixtures):
    """The fixture notes hold the README loop's boxes (minSize 24); every one ≥ --min-face is found."""
    _, _, rows = cropped
    checked = 0
    for name, note in fixture_notes(fixtures).items():
        for x, y, w, h in re.findall(r"x(\d+),y(\d+),w(\d+),h(\d+)", note):
            expected = Box.from_xywh(int(x), int(y), int(w), int(h))
            if expected.side < CropSettings().min_face:
                continue
            found = [
                Box(r["face_x0"], r["face_y0"], r["face_x1"], r["face_y1"])
                for r in rows[name]
                if r["face_x0"]
            ]
            assert max(iou(expected, box) for box in found) >= 0.9, name
            checked += 1
    assert checked >= 70


def test_crops_are_square_pngs_with_their_geometry(cropped):
    ws, _, rows = cropped
    faces = [r for rs in rows.values() for r in rs if r["status"] == "ok"]
    for row in faces[:25]:
        assert row["face_id"] == f"{row['image_id']}-{row['face_index']}" and row["detector"] == "cascade"
        with Image.open(ws.root / row["path"]) as crop:
            assert crop.size == (256, 256) and crop.mode == "RGB"
        side = row["crop_x1"] - row["crop_x0"]
        assert (
            side
            == row["crop_y1"] - row["crop_y0"]
            == pytest.approx(2 * (row["face_x1"] - row["face_x0"]), abs=1)
        )
        assert row["crop_x0"] <= row["face_x0"] and row["crop_y0"] <= row["face_y0"] and row["score"] > 0
    for rs in rows.values():  # faces of one image come best first
        scores = [
            r["score"] for r in sorted(rs, key=lambda r: r["face_index"] or 0) if r["score"] is not None
        ]
        assert scores == sorted(scores, reverse=True)
    sketch = rows["s2p__V1_images_test_12_.jpg"]
    assert all(r["is_monochrome"] and r["mode"] == "L" for r in sketch)


def test_a_face_at_the_image_edge_is_padded_not_cut(fixtures, tmp_path):
    source = fixtures / "images" / "faces" / "dbregion__code_app1.jpg"  # face at x246 y174 w277 h277
    folder = tmp_path / "edge"
    folder.mkdir()
    with Image.open(source) as image:
        image.crop((246, 174, 246 + 500, 174 + 700)).save(folder / "edge.png")  # face in the top-left corner
    ws = tmp_path / "ws"
    ingest_folder(folder, ws, progress=False)
    crop_images(ws, options(fixtures, crop=CropSettings(pad="#ff00ff", size=128)))
    (row,) = read_stage(Workspace.open(ws), CROP).to_pylist()
    assert row["status"] == "ok" and row["padded"]
    assert row["crop_x0"] < 0 and row["crop_y0"] < 0 and row["face_x0"] < 10
    pixels = np.asarray(Image.open(ws / row["path"]))
    assert pixels.shape == (128, 128, 3)
    assert tuple(pixels[2, 2]) == (255, 0, 255) and tuple(pixels[-3, -3]) != (255, 0, 255)


def test_failures_resume_retry_and_force(fixtures, face_images, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    picks = [p for p in face_images if p.name in {"dbregion__code_app1.jpg", "pundo__imgs_3.jpg"}]
    picks += [p for p in face_images if p.suffix == ".png"][:2]
    for path in picks:
        shutil.copy(path, folder / path.name)
    ws = Workspace.open(tmp_path / "ws")
    ingest_folder(folder, ws.root, progress=False)
    stored = {Path(r["source_id"]).name: ws.root / r["path"] for r in read_stage(ws, CRAWL).to_pylist()}
    truncated, missing = stored[picks[0].name], stored[picks[1].name]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    missing.rename(missing.with_suffix(".away"))

    first = crop_images(ws.root, options(fixtures))
    rows = rows_by_file(ws)
    assert [(r["status"], r["error"]) for r in rows[picks[0].name]] == [("failed", "decode_error")]
    assert [(r["status"], r["error"]) for r in rows[picks[1].name]] == [("failed", "missing_file")]
    assert first.images == 4 and first.outcomes[("failed", "decode_error")] == 1

    again = crop_images(ws.root, options(fixtures))
    assert (again.images, again.already_done) == (0, 4)

    shutil.copy(picks[0], truncated)
    missing.with_suffix(".away").rename(missing)
    retried = crop_images(ws.root, options(fixtures, retry_failed=True))
    assert retried.images == 2
    rows = rows_by_file(ws)
    assert all(r["status"] == "ok" for name in (picks[0].name, picks[1].name) for r in rows[name])

    forced = crop_images(ws.root, options(fixtures, force=True, crop=CropSettings(min_face=400)))
    assert forced.images == 4
    after = rows_by_file(ws)  # no face is 400 px: each image's newest rows replace all its older ones
    assert all([r["error"] for r in rs] == ["no_face"] for rs in after.values())
    assert read_stage(ws, CROP).num_rows == 4


class FixedBoxes:
    """A stand-in detector that finds the same boxes everywhere (in the pixels it is given)."""

    name = "cascade"

    def __init__(self, boxes):
        self.boxes = boxes

    def decode_scale(self, width, height, min_face):
        return 0.5

    def detect(self, images, min_faces=None):
        return [list(self.boxes) for _ in images]

    def params(self):
        return {}


def test_small_faces_get_too_small_rows_and_crops_use_full_resolution(fixtures, face_images, tmp_path):
    from detect.faces.crop import Cropper, Job

    ws = Workspace.open(tmp_path / "ws")
    source = next(p for p in face_images if p.name == "dbregion__code_app1.jpg")  # 1024×1448 JPEG
    ws.images.mkdir(parents=True)
    shutil.copy(source, ws.images / "app1.jpg")
    boxes = [Box(123, 87, 261.5, 225.5, 0.9), Box(10, 10, 40, 40, 0.8)]  # at half scale: 277 px, 60 px
    cropper = Cropper(
        ws, DetectorSpec(), CropSettings(size=512, margin=0.0, lift=0.0), detector=FixedBoxes(boxes)
    )
    big, small = cropper.process(Job("f" * 32, "images/app1.jpg"))
    assert (big["status"], small["status"], small["error"], small.get("path")) == (
        "ok",
        "skipped",
        "too_small",
        None,
    )
    assert (big["face_x0"], big["face_y0"], big["face_x1"]) == (246, 174, 523)  # original pixels
    crop = np.asarray(Image.open(ws.root / big["path"]))
    with Image.open(source) as original:  # cut from the full-size decode, not the half-size one
        expected = np.asarray(
            original.convert("RGB").crop((246, 174, 523, 451)).resize((512, 512), Image.LANCZOS)
        )
    assert crop.shape == (512, 512, 3) and np.abs(crop.astype(int) - expected).mean() < 4


def test_shards_split_the_images(fixtures, face_images, tmp_path):
    folder = tmp_path / "some"
    folder.mkdir()
    for path in face_images[:12]:
        shutil.copy(path, folder / path.name)
    ws = Workspace.open(tmp_path / "ws")
    ingest_folder(folder, ws.root, progress=False)
    counts = [crop_images(ws.root, options(fixtures, shard=Shard(k, 3))).images for k in range(3)]
    assert sum(counts) == 12 and all(counts)
    assert len({r["image_id"] for r in read_stage(ws, CROP).to_pylist()}) == 12


def test_the_cascade_path_never_imports_torch(fixtures, face_images, tmp_path):
    # in a fresh interpreter: this one has imported torch for the Faster R-CNN tests
    ws = tmp_path / "ws"
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(face_images[0], folder / face_images[0].name)
    ingest_folder(folder, ws, progress=False)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from detect.faces.crop import CropOptions, DetectorSpec, crop_images\n"
        f"spec = DetectorSpec(model=Path({str(fixtures / 'models' / 'lbpcascade_animeface.xml')!r}))\n"
        f"report = crop_images({str(ws)!r}, CropOptions(detector=spec, progress=False))\n"
        "print(report.images, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.split() == ["1", "False"], result.stderr[-2000:]


def test_bad_settings_and_missing_manifest(fixtures, tmp_path):
    with pytest.raises(InvalidArgument, match="no crawl or ingest manifest"):
        crop_images(tmp_path / "empty", options(fixtures))
    with pytest.raises(InvalidArgument, match="--shard"):
        Shard.parse("3/2")
    with pytest.raises(InvalidArgument, match="--detector"):
        DetectorSpec(kind="yolo")


def test_cli_crop_and_errors(fixtures, face_images, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for path in face_images[:2]:
        shutil.copy(path, folder / path.name)
    ws = tmp_path / "ws"
    ingest_folder(folder, ws, progress=False)

    def curate(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "curate", "crop", "-w", str(ws), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)

    cascade = str(fixtures / "models" / "lbpcascade_animeface.xml")
    done = curate("--cascade", cascade, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "crop (cascade): 2 images" in done.stdout
    assert "nothing to do" in curate("--cascade", cascade).stdout
    bad = curate("--pad", "mauve", "--cascade", cascade)
    assert bad.returncode == 2 and "--pad must be" in bad.stderr and "Traceback" not in bad.stderr
    missing = curate("--force", "--cascade", str(tmp_path / "nope.xml"))
    assert missing.returncode == 1 and "model file not found" in missing.stderr
