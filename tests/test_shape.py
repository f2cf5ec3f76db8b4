"""The crops' shape descriptors (embed/shape.py): HOGs at two scales, cached, on real fixture images."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
from PIL import Image  # noqa: E402

from curate.workspace import Workspace  # noqa: E402
from embed import shape  # noqa: E402
from embed.shape import SCALES, descriptor_size, shape_descriptors  # noqa: E402


@pytest.fixture
def crops(tmp_path, face_images) -> tuple[Workspace, list[str], list[str]]:
    """A workspace holding three fixture illustrations as crop files (PNG and JPEG)."""
    ws = Workspace.open(tmp_path / "ws")
    (ws.crops / "aa").mkdir(parents=True)
    ids, paths = [], []
    for n, source in enumerate(face_images[:3]):
        image = Image.open(source).convert("RGB").resize((200, 200))
        path = ws.crops / "aa" / f"face{n}.{'png' if n % 2 else 'jpg'}"
        image.save(path)
        ids.append(f"face{n}-0")
        paths.append(ws.relative(path))
    return ws, ids, paths


def reference_hog(path, side: int) -> np.ndarray:
    grey = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.HOGDescriptor((side, side), (16, 16), (8, 8), (8, 8), 9).compute(grey).ravel()


def test_each_descriptor_is_the_hog_of_the_grey_crop_at_its_scale(crops):
    ws, ids, paths = crops
    found = shape_descriptors(ws, ids, paths)
    assert list(found) == ["shape", "layout"] and SCALES == {"shape": 64, "layout": 32}
    assert found["shape"].shape == (3, 1764) == (3, descriptor_size(64))
    assert found["layout"].shape == (3, 324) == (3, descriptor_size(32))
    for name, side in SCALES.items():
        for row, path in enumerate(paths):
            # stored in half precision, so a cached face scores as a fresh one
            np.testing.assert_allclose(found[name][row], reference_hog(ws.root / path, side), atol=1e-3)
    assert not np.allclose(found["shape"][0], found["shape"][1])  # different drawings, different edges


def test_a_transparent_crop_is_described_on_white(crops):
    ws, _, paths = crops
    rgb = Image.open(ws.root / paths[1]).convert("RGB")
    rgba = rgb.convert("RGBA")
    alpha = np.full((200, 200), 255, np.uint8)
    alpha[:, :80] = 0  # the left part transparent: it must read as white, not as the hidden colours
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(ws.crops / "aa" / "clear.png")
    flat = np.asarray(rgb).copy()
    flat[:, :80] = 255
    Image.fromarray(flat).save(ws.crops / "aa" / "flat.png")
    found = shape_descriptors(ws, ["clear-0", "flat-0"], ["crops/aa/clear.png", "crops/aa/flat.png"])
    np.testing.assert_allclose(found["shape"][0], found["shape"][1], atol=1e-3)


def test_a_missing_or_broken_crop_is_unknown_and_the_others_are_not(crops):
    ws, ids, paths = crops
    (ws.crops / "aa" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    found = shape_descriptors(
        ws,
        [*ids, "gone-0", "broken-0", "example:0"],
        [*paths, "crops/aa/gone.png", "crops/aa/broken.png", None],
    )
    for values in found.values():
        assert np.isfinite(values[:3]).all() and np.isnan(values[3:]).all()
    cache = ws.models / "filter" / "shapes.npz"
    written = cache.stat()
    again = shape_descriptors(ws, [*ids, "broken-0"], [*paths, "crops/aa/broken.png"])
    assert np.isnan(again["shape"][3]).all() and np.array_equal(again["shape"][:3], found["shape"][:3])
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_descriptors_are_cached_by_face_and_path(crops, monkeypatch):
    ws, ids, paths = crops
    first = shape_descriptors(ws, ids, paths)
    assert (ws.models / "filter" / "shapes.npz").is_file()
    computed = []
    real = shape._hog_of
    monkeypatch.setattr(shape, "_hog_of", lambda path: computed.append(path.name) or real(path))
    again = shape_descriptors(ws, ids, paths)
    assert computed == [] and all(np.array_equal(first[n], again[n]) for n in first)
    moved = ws.crops / "aa" / "moved.png"
    moved.write_bytes((ws.root / paths[1]).read_bytes())
    shape_descriptors(ws, ids, [paths[0], ws.relative(moved), paths[2]])  # a new path: described again
    assert computed == ["moved.png"]
    monkeypatch.setattr(shape, "VERSION", "hog-other")  # other settings: the cache is not theirs
    shape_descriptors(ws, ids, paths)
    assert sorted(computed[1:]) == sorted(p.rsplit("/", 1)[1] for p in paths)
