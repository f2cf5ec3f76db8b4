"""Image checks on the real fixtures: odd formats pass, corrupt files fail with decode_error."""

from __future__ import annotations

import pytest
from PIL import Image

from curate.images import ImageCheckError, inspect_image, sniff
from tests.conftest import CORRUPT


def test_every_valid_fixture_decodes_and_every_corrupt_one_fails(face_images, noise_images):
    for path in face_images + noise_images:
        if path.name in CORRUPT:
            with pytest.raises(ImageCheckError) as caught:
                inspect_image(path)
            assert caught.value.code == "decode_error", path.name
        else:
            info = inspect_image(path)
            assert info.width > 0 and info.height > 0 and info.frames >= 1, path.name


def test_odd_formats_are_measured_right(fixtures):
    noise = fixtures / "images" / "noise"
    faces = fixtures / "images" / "faces"
    rotated = inspect_image(noise / "danbooru__test_files_jpg_test-rotation-90cw.jpg")
    assert (rotated.width, rotated.height) == (96, 128)  # stored 128x96, displayed after EXIF rotation
    animated = inspect_image(faces / "danbooru__test_files_gif_test-animated-400x281.gif")
    assert (animated.format, animated.frames) == ("gif", 2)
    apng = inspect_image(faces / "danbooru__test_files_apng_infinite-fps.png")
    assert (apng.format, apng.frames) == ("png", 2)
    # A PNG named .jpg: the format comes from the bytes, never from the name.
    assert inspect_image(noise / "s2p__temps_show_sketches_7.jpg").format == "png"


def test_html_error_page_is_not_an_image(tmp_path):
    page = tmp_path / "x.jpg"
    page.write_bytes(b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>")
    with pytest.raises(ImageCheckError) as caught:
        inspect_image(page)
    assert caught.value.code == "not_image"
    blob = tmp_path / "y.bin"
    blob.write_bytes(b"\x00\x01\x02 not a known signature")
    with pytest.raises(ImageCheckError) as caught:
        inspect_image(blob)
    assert caught.value.code == "unsupported_format"


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(bomb)  # 12 Mpx of zeros: a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageCheckError) as caught:
        inspect_image(bomb, max_pixels=10_000_000)
    assert caught.value.code == "decompression_bomb"
    assert inspect_image(bomb, max_pixels=20_000_000).width == 4000


def test_sniff_signatures():
    assert sniff(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff(b"GIF89a") == "gif"
    assert sniff(b"<html>") is None


def test_png_cut_short_or_with_a_flipped_pixel_byte_fails(fixtures, tmp_path):
    original = (fixtures / "images" / "faces" / "bizarre___samples_megumin.png").read_bytes()
    assert inspect_image(fixtures / "images" / "faces" / "bizarre___samples_megumin.png").format == "png"
    cut = tmp_path / "cut.png"
    cut.write_bytes(original[: len(original) * 6 // 10])  # as a board holding a half-uploaded file serves it
    flipped = tmp_path / "flipped.png"
    data = bytearray(original)
    middle = original.index(b"IDAT") + 4 + 1000
    data[middle] ^= 0xFF
    flipped.write_bytes(bytes(data))
    for broken in (cut, flipped):
        with pytest.raises(ImageCheckError) as caught:
            inspect_image(broken)
        assert caught.value.code == "decode_error", broken.name


def test_jpeg_cut_short_fails(fixtures, tmp_path):
    original = (fixtures / "images" / "faces" / "pundo__imgs_1.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(original[: len(original) // 2])
    with pytest.raises(ImageCheckError) as caught:
        inspect_image(cut)
    assert caught.value.code == "decode_error"
