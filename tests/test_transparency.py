"""Transparent originals, crops and example images through every writer of images and every reader of
example images: flattened on white, and no PNG written with a transparent colour.

Pillow keeps `info["transparency"]` through convert("RGB"): a palette image's transparent entry
becomes an RGB colour that PNG writes back as transparent (so an opaque part of the picture of that
colour vanishes when read again), and the key of 1-bit or 16-bit grey makes PNG's save raise.
"""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.images import flat_rgb
from curate.workspace import Workspace

SIDE = 128
RED, GREEN, BLUE = (255, 0, 0), (0, 160, 0), (0, 0, 255)
# spots (row, column) well inside each region of `palette_png`'s picture
TRANSPARENT, OPAQUE_GREEN, OPAQUE_RED, BOTTOM = (64, 32), (64, 96), (8, 96), (120, 96)


def palette_png(path: Path, transparency: int | bytes) -> Path:
    """A "P" PNG: left half entry 0 (red, transparent), right half green, the top rows entry 2 (the
    same red, opaque), the bottom rows entry 3 (blue; half transparent when `transparency` is bytes)."""
    index = np.zeros((SIDE, SIDE), np.uint8)
    index[:, SIDE // 2 :] = 1
    index[: SIDE // 8] = 2
    index[-SIDE // 8 :] = 3
    image = Image.fromarray(index, "P")
    image.putpalette([*RED, *GREEN, *RED, *BLUE])
    image.save(path, transparency=transparency)
    with Image.open(path) as saved:  # what the file really holds, as the writers will meet it
        assert saved.mode == "P" and saved.info["transparency"] == transparency
    return path


def grey_png(path: Path, mode: str) -> Path:
    """A 1-bit or 8-bit grey PNG whose left half is its transparent value (tRNS)."""
    high = 1 if mode == "1" else 200
    pixels = np.full((SIDE, SIDE), high, np.uint8)
    pixels[:, : SIDE // 2] = 0
    image = Image.fromarray(pixels * 255 if mode == "1" else pixels, "L").convert(mode)
    image.save(path, transparency=0)
    with Image.open(path) as saved:
        assert saved.mode == mode and saved.info["transparency"] == 0
    return path


@pytest.fixture
def transparent(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "transparent"
    folder.mkdir()
    return {
        "palette": palette_png(folder / "palette.png", 0),
        "palette-bytes": palette_png(folder / "palette-bytes.png", b"\x00\xff\xff\x80"),
        "grey": grey_png(folder / "grey.png", "L"),
        "bilevel": grey_png(folder / "bilevel.png", "1"),
    }


def shown(path: Path) -> np.ndarray:
    """The pixels as a viewer shows the file: composited on white. A stale tRNS in a written PNG shows."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba).convert("RGB"))


def assert_written_flat(out: Path, source: Path, scale: float = 1.0, tolerance: int = 2) -> None:
    """`out` (a written image) shows what `source` shows, spot by spot, and holds no transparency."""
    with Image.open(out) as image:
        assert image.mode == "RGB" and "transparency" not in image.info, (out, image.mode, image.info)
    expected, got = shown(source), shown(out)
    for row, column in (TRANSPARENT, OPAQUE_GREEN, OPAQUE_RED, BOTTOM):
        want = expected[row, column].astype(int)
        have = got[int(row * scale), int(column * scale)].astype(int)
        assert np.abs(want - have).max() <= tolerance, (out.name, (row, column), want, have)


def test_the_pictures_are_what_the_tests_think(transparent):
    palette = shown(transparent["palette"])
    assert tuple(palette[TRANSPARENT]) == (255, 255, 255) and tuple(palette[OPAQUE_RED]) == RED
    assert tuple(palette[OPAQUE_GREEN]) == GREEN and tuple(palette[BOTTOM]) == BLUE
    half = shown(transparent["palette-bytes"])[BOTTOM].astype(int)  # blue at alpha 128 on white
    assert np.abs(half - (127, 127, 255)).max() <= 1
    assert tuple(shown(transparent["grey"])[TRANSPARENT]) == (255, 255, 255)
    # the trap itself, so that the tests below test something
    with Image.open(transparent["palette"]) as image:
        assert image.convert("RGB").info["transparency"] == RED
    with Image.open(transparent["bilevel"]) as image, pytest.raises(ValueError, match="transparency"):
        image.convert("RGB").save(transparent["bilevel"].with_name("out.png"))


def test_flat_rgb_shows_what_a_viewer_shows(transparent, tmp_path):
    for name, path in transparent.items():
        with Image.open(path) as image:
            flat = flat_rgb(image)
        assert flat.mode == "RGB" and "transparency" not in flat.info
        flat.save(tmp_path / f"{name}.png")
        assert_written_flat(tmp_path / f"{name}.png", path)


class WholeImage:
    """A stand-in detector that finds one face filling the image."""

    name = "cascade"

    def decode_scale(self, width, height, min_face):
        return 1.0

    def detect(self, images, min_faces=None):
        from detect.faces.boxes import Box

        return [[Box(0, 0, image.shape[1], image.shape[0], 1.0)] for image in images]

    def params(self):
        return {}


def test_crops_of_transparent_originals(transparent, tmp_path):
    from detect.faces.crop import Cropper, DetectorSpec, Job
    from detect.faces.geometry import CropSettings

    ws = Workspace.open(tmp_path / "ws")
    ws.images.mkdir(parents=True)
    settings = CropSettings(size=SIDE, margin=0.0, lift=0.0, min_face=32)
    cropper = Cropper(ws, DetectorSpec(), settings, detector=WholeImage())
    for n, path in enumerate(transparent.values()):
        shutil.copy(path, ws.images / path.name)
        (row,) = cropper.process(Job(f"{n:032x}", f"images/{path.name}"))
        assert row["status"] == "ok", row
        assert_written_flat(ws.root / row["path"], path)


def test_export_and_report_of_transparent_crops(fixtures, transparent, tmp_path):
    """Crops written by other tools (or older versions) may be palette PNGs: export and the report's
    thumbnails show them flattened on white."""
    from curate.export.select import SelectOptions
    from curate.export.stage import ExportOptions, export_dataset
    from curate.manifest import FILTER, read_stage
    from curate.report import _thumbnails
    from tests.conftest import curated_workspace

    ws = curated_workspace(fixtures, tmp_path / "base")
    kept = sorted(r["face_id"] for r in read_stage(ws, FILTER).to_pylist() if r["keep"])
    sources = dict(zip(kept, transparent.values(), strict=False))
    for face, path in sources.items():
        shutil.copy(path, next(ws.root.glob(f"crops/*/{face}.png")))
    out = tmp_path / "if"
    export_dataset(ws.root, ExportOptions("imagefolder", out, SIDE, SelectOptions(), False))
    for face, path in sources.items():
        assert_written_flat(next(out.glob(f"*/{face}.png")), path)
    out = tmp_path / "sg"  # resized on the way
    export_dataset(ws.root, ExportOptions("stylegan", out, SIDE // 2, SelectOptions(), False))
    with zipfile.ZipFile(next(out.glob("*.zip"))) as archive:
        images = [Image.open(io.BytesIO(archive.read(n))) for n in archive.namelist() if n.endswith(".png")]
    assert len(images) == len(kept) and all(i.mode == "RGB" and "transparency" not in i.info for i in images)
    # each transparent half, flattened to white, survives the resize
    whites = [i for i in images if (np.asarray(i)[SIDE // 8 : SIDE * 3 // 8, : SIDE // 8] >= 250).all()]
    assert len(whites) >= len(sources)

    thumbs = tmp_path / "report"
    (thumbs / "thumbs").mkdir(parents=True)
    crops = {face: ws.relative(next(ws.root.glob(f"crops/*/{face}.png"))) for face in sources}
    made = _thumbnails(ws, crops, list(sources), thumbs, progress=False)
    for face, path in sources.items():
        with Image.open(thumbs / made[face]) as thumb:
            scale = thumb.width / SIDE
        assert_written_flat(thumbs / made[face], path, scale, tolerance=12)  # JPEG


def test_example_images_embed_as_their_flattened_pixels(transparent):
    pytest.importorskip("torchvision")
    import torch

    from embed.train import eval_transform

    transform = eval_transform(32)
    for path in transparent.values():
        with Image.open(path) as image:
            flat = flat_rgb(image)
            assert torch.equal(transform(image), transform(flat)), path.name


def test_the_filter_mix_crops_transparent_noise(transparent, tmp_path):
    from tests import mixes

    fixtures = tmp_path / "fixtures"
    (fixtures / "images").mkdir(parents=True)
    shutil.copytree(transparent["palette"].parent, fixtures / "images" / "noise")
    ws = Workspace.open(tmp_path / "ws")
    rows = mixes._noise_crops(ws, fixtures)
    assert sorted(r["_source"] for r in rows) == sorted(p.name for p in transparent.values())
    for row in rows:
        assert_written_flat(
            ws.root / row["path"], transparent[Path(row["_source"]).stem], mixes.PATCH_SIDE / SIDE
        )

    # face-sized patches beside a "face" in the top-left quarter, from the same pictures
    crops = [
        {"image_id": mixes._image_id(p.read_bytes()), "face_x0": 0.0, "face_y0": 0.0, "face_x1": 40.0,
         "face_y1": 40.0}
        for p in transparent.values()
    ]  # fmt: skip
    patches = mixes._non_face_patches(ws, list(transparent.values()), crops, 4, random.Random(0))
    assert len(patches) == 4
    for row in patches:
        with Image.open(ws.root / row["path"]) as image:
            assert image.mode == "RGB" and "transparency" not in image.info
