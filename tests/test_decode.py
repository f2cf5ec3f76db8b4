"""Decoding originals for the crop stage: orientation, colour modes, alpha, frames, reduced JPEG decoding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from curate.images import ImageCheckError
from detect.faces.decode import decode, is_monochrome
from tests.conftest import CORRUPT


def test_exif_orientation_is_applied(tmp_path):
    # A 40×20 picture, red on its left half, stored as 20×40 with orientation 6 (rotate 90° CW to show).
    shown = np.zeros((20, 40, 3), np.uint8)
    shown[:, :20] = (255, 0, 0)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(shown, 1)))  # undo a clockwise turn
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif, quality=95)
    image = decode(path)
    assert (image.width, image.height) == (40, 20) and image.rgb.shape == (20, 40, 3)
    assert image.rgb[10, 5, 0] > 200 and image.rgb[10, 35, 0] < 60  # red stays on the left


def test_cmyk_and_16_bit_with_alpha(tmp_path):
    import cv2

    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red
    cmyk = decode(tmp_path / "cmyk.jpg")
    assert cmyk.mode == "CMYK" and cmyk.rgb.dtype == np.uint8
    assert tuple(int(v) for v in cmyk.rgb[4, 8]) == pytest.approx((255, 0, 0), abs=3)

    bgra = np.zeros((8, 16, 4), np.uint16)
    bgra[:, :8] = (0, 0, 65535, 65535)  # opaque red on the left
    bgra[:, 8:] = (0, 0, 0, 0)  # fully transparent black on the right: must become white
    cv2.imwrite(str(tmp_path / "deep.png"), bgra)
    deep = decode(tmp_path / "deep.png")
    assert tuple(deep.rgb[4, 2]) == (255, 0, 0) and tuple(deep.rgb[4, 12]) == (255, 255, 255)

    grey16 = (np.arange(16 * 8, dtype=np.uint16).reshape(8, 16) * 512).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    grey = decode(tmp_path / "grey16.png")
    assert grey.is_monochrome and grey.rgb.shape == (8, 16, 3)
    assert grey.rgb[7, 15, 0] == round(127 * 512 * 255 / 65535)


def test_half_transparent_alpha_is_flattened_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(tmp_path / "half.png")
    assert tuple(decode(tmp_path / "half.png").rgb[0, 0]) == (127, 127, 127)  # 0·128/255 + 255·127/255


def test_first_frame_of_animations(face_images):
    gif = next(p for p in face_images if p.name == "danbooru__test_files_gif_test-animated-400x281.gif")
    apng = next(p for p in face_images if p.name == "danbooru__test_files_apng_infinite-fps.png")
    for path, size in ((gif, (400, 281)), (apng, (640, 480))):
        image = decode(path)
        assert image.frames == 2 and (image.width, image.height) == size
        with Image.open(path) as first:
            first.seek(0)
            white = Image.new("RGBA", first.size, (255, 255, 255, 255))  # transparency shows as white
            expected = np.asarray(Image.alpha_composite(white, first.convert("RGBA")).convert("RGB"))
        assert np.array_equal(image.rgb, expected)


def test_reduced_jpeg_decode_uses_dct_scaling(face_images):
    path = next(p for p in face_images if p.name == "dbregion__code_app1.jpg")  # 1024×1448
    half = decode(path, scale_for=lambda w, h: 0.5)
    assert (half.width, half.height) == (1024, 1448)
    assert half.rgb.shape == (724, 512, 3) and half.scale == 0.5
    odd = decode(path, scale_for=lambda w, h: 0.3)  # draft gives 1/2, then an area resize to 0.3
    assert odd.rgb.shape == (434, 307, 3)


def test_monochrome_flag_on_fixtures(face_images):
    sketch = next(p for p in face_images if p.name == "s2p__V1_images_test_12_.jpg")  # greyscale JPEG
    colour = next(p for p in face_images if p.name == "dbregion__code_app1.jpg")
    assert decode(sketch).is_monochrome and not decode(colour).is_monochrome
    rng = np.random.default_rng(0)
    tinted = np.repeat(rng.integers(0, 255, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    tinted[..., 0] = np.clip(tinted[..., 0].astype(int) + 10, 0, 255)  # a faint sepia cast stays mono
    assert is_monochrome(tinted)


def test_corrupt_fixtures_raise_a_coded_error(noise_images):
    for path in (p for p in noise_images if p.name in CORRUPT):
        with pytest.raises(ImageCheckError) as caught:
            decode(path)
        assert caught.value.code == "decode_error", path.name
