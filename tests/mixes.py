"""The fixture mix the filter is judged on (by a test and by tests/bench/filter.py).

Good: the cascade's face crops of the illustrations. Bad: square crops of the noise fixtures (animals,
scenery, photos, text pages) and random patches of the illustrations that touch no detected face, the
detector's typical false positive. Optionally, re-encoded and downsized copies of some illustrations are
added as posts of their own, so that their faces are near-duplicates of the originals' faces.

The bad crops' detector facts are made as honest as their pixels: each takes the detector score and the
box shape (its side relative to the image's shorter side, its aspect) of a real face drawn at random
(seeded), placed at a random spot of its own image. So neither the score nor the geometry tells a bad
crop from a face, and a learned filter score can only learn from what a detector's false positive would
really show. The recorded box is thus not the region the bad crop's pixels come from (those are as
described above); nothing reads it as such.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from crawl.local import ingest_folder
from curate.images import ImageCheckError
from curate.manifest import CROP, OK, now_utc, read_stage, write_part
from curate.workspace import Workspace
from detect.faces.crop import CropOptions, DetectorSpec, crop_images
from detect.faces.decode import decode

PATCH_SIDE = 256  # bad crops are stored at this size, as a face crop of a large source would be


@dataclass
class Mix:
    ws: Workspace
    faces: list[str]  # face ids of the real faces
    bad: list[str]  # face ids of the noise crops and non-face patches
    copies: dict[str, str] = field(default_factory=dict)  # face id of a copy → face id of its original
    resized: set[str] = field(default_factory=set)  # the copies that were made smaller
    sources: dict[str, str] = field(default_factory=dict)  # face id → the fixture file it came from


def fixture_mix(fixtures: Path, root: Path, *, copies: int = 0, patches: int = 40, seed: int = 0) -> Mix:
    """Ingest and cascade-crop the face fixtures (and `copies` copied pairs), then add the bad crops."""
    ws = Workspace.open(root / "ws")
    originals = root / "originals"
    originals.mkdir(parents=True)
    sources = sorted((fixtures / "images" / "faces").iterdir())
    for path in sources:
        (originals / path.name).write_bytes(path.read_bytes())
    _ingest_and_crop(fixtures, ws, originals)
    crops = [r for r in read_stage(ws, CROP).to_pylist() if r["status"] == OK]
    faces = [r["face_id"] for r in crops]
    name_of = {_image_id(path.read_bytes()): path.name for path in sources}
    origin = {r["face_id"]: name_of[r["image_id"]] for r in crops}
    rng = random.Random(seed)
    copied, resized = _add_copies(fixtures, ws, root / "copies", sources, crops, copies, rng)
    rows = _noise_crops(ws, fixtures) + _non_face_patches(ws, sources, crops, patches, rng)
    _detector_facts_of_faces(rows, crops, random.Random(f"{seed}-detector"))
    origin |= {copy: origin[original] for copy, original in copied.items()}
    origin |= {row["face_id"]: row.pop("_source") for row in rows}
    write_part(ws, CROP, rows)
    return Mix(ws, faces, [r["face_id"] for r in rows], copied, resized, origin)


def embedded_mix(fixtures: Path, root: Path, training) -> Mix:
    """The mix the filter tests share (10 copied pairs, 40 patches), embedded by instance discrimination
    trained with `training` (an EmbedTrainOptions)."""
    from embed.stage import EmbedOptions, embed_faces

    mix = fixture_mix(fixtures, root, copies=10, patches=40)
    embed_faces(mix.ws.root, EmbedOptions(train=training, progress=False))
    return mix


def _ingest_and_crop(fixtures: Path, ws: Workspace, folder: Path) -> None:
    ingest_folder(folder, ws.root, progress=False)
    spec = DetectorSpec(model=fixtures / "models" / "lbpcascade_animeface.xml")
    crop_images(ws.root, CropOptions(detector=spec, progress=False))


def _picture(path: Path):
    """The original as the crop stage sees it (EXIF orientation applied, transparency on white): a new
    RGB image whose info holds no `transparency` left from a palette, which PNG would write back."""
    from PIL import Image

    return Image.fromarray(decode(path).rgb)


def _image_id(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _add_copies(
    fixtures: Path, ws: Workspace, folder: Path, sources: list[Path], crops: list[dict], count: int, rng
) -> tuple[dict[str, str], set[str]]:
    """A JPEG re-encode and a 0.7× resize of `count` one-face illustrations.

    Returns {copy face → original face} and the faces of the resized copies.
    """
    from PIL import Image

    if not count:
        return {}, set()
    by_image: dict[str, list[dict]] = {}
    for row in crops:
        by_image.setdefault(row["image_id"], []).append(row)
    single = [p for p in sources if len(by_image.get(_image_id(p.read_bytes()), ())) == 1]
    folder.mkdir(parents=True)
    original_of: dict[str, str] = {}  # copy's image id → original's face id
    smaller: set[str] = set()  # image ids of the resized copies
    for path in rng.sample(single, min(count, len(single))):
        face = by_image[_image_id(path.read_bytes())][0]["face_id"]
        image = _picture(path)
        small = image.resize((image.width * 7 // 10, image.height * 7 // 10), Image.Resampling.LANCZOS)
        for kind, variant, quality in (("jpeg", image, 75), ("small", small, 90)):
            buffer = io.BytesIO()
            variant.save(buffer, format="JPEG", quality=quality)
            data = buffer.getvalue()
            (folder / f"{path.stem}.{kind}.jpg").write_bytes(data)
            original_of[_image_id(data)] = face
            if kind == "small":
                smaller.add(_image_id(data))
    _ingest_and_crop(fixtures, ws, folder)
    copied, resized = {}, set()
    for row in read_stage(ws, CROP).to_pylist():
        if row["status"] == OK and row["image_id"] in original_of:
            copied[row["face_id"]] = original_of[row["image_id"]]
            if row["image_id"] in smaller:
                resized.add(row["face_id"])
    return copied, resized


def _bad_row(ws: Workspace, image_id: str, out: Path, box: tuple[int, ...], source: Path, size) -> dict:
    x0, y0, x1, y1 = box
    return {
        "_source": source.name,
        "face_id": f"{image_id}-0", "image_id": image_id, "status": OK, "path": ws.relative(out),
        "face_x0": float(x0), "face_y0": float(y0), "face_x1": float(x1), "face_y1": float(y1),
        "score": 0.0, "image_width": size[0], "image_height": size[1], "cropped_at": now_utc(),
    }  # fmt: skip


def _detector_facts_of_faces(rows: list[dict], crops: list[dict], rng) -> None:
    """Give each bad row the detector score and box shape of a random real face, scaled to its image."""
    for row in rows:
        face = rng.choice(crops)
        width, height = row["image_width"], row["image_height"]
        scale = min(width, height) / min(face["image_width"], face["image_height"])
        w = min((face["face_x1"] - face["face_x0"]) * scale, width)
        h = min((face["face_y1"] - face["face_y0"]) * scale, height)
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        row |= {"face_x0": x0, "face_y0": y0, "face_x1": x0 + w, "face_y1": y0 + h, "score": face["score"]}


def _noise_crops(ws: Workspace, fixtures: Path) -> list[dict]:
    """The centre square of every readable noise fixture."""

    rows = []
    for index, path in enumerate(sorted((fixtures / "images" / "noise").iterdir())):
        try:
            image = _picture(path)
        except ImageCheckError:
            continue  # the corrupt fixtures
        side = min(image.size)
        if side < 64:
            continue
        box = ((image.width - side) // 2, (image.height - side) // 2)
        box = (*box, box[0] + side, box[1] + side)
        out = ws.crops / "zz" / f"noise{index}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        image.crop(box).resize((PATCH_SIDE, PATCH_SIDE)).save(out)
        rows.append(_bad_row(ws, f"noise{index}", out, box, path, image.size))
    return rows


def _non_face_patches(ws: Workspace, sources: list[Path], crops: list[dict], count: int, rng) -> list[dict]:
    """Squares of face size from illustrations, placed where they overlap no detected face."""

    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in crops:
        boxes.setdefault(row["image_id"], []).append(
            (row["face_x0"], row["face_y0"], row["face_x1"], row["face_y1"])
        )
    rows = []
    for path in rng.sample(sources, len(sources)):
        if len(rows) >= count:
            break
        faces = boxes.get(_image_id(path.read_bytes()))
        if not faces:
            continue
        image = _picture(path)
        side = int(min(faces[0][2] - faces[0][0], image.width, image.height) * 0.9)
        for _ in range(20):  # a few tries at a spot clear of every face
            x0, y0 = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
            clear = (
                x0 + side <= fx0 or fx1 <= x0 or y0 + side <= fy0 or fy1 <= y0 for fx0, fy0, fx1, fy1 in faces
            )
            if all(clear):
                out = ws.crops / "zz" / f"patch{len(rows)}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                image.crop((x0, y0, x0 + side, y0 + side)).resize((PATCH_SIDE, PATCH_SIDE)).save(out)
                row = _bad_row(ws, f"patch{len(rows)}", out, (x0, y0, x0 + side, y0 + side), path, image.size)
                rows.append(row)
                break
    return rows
