"""Crop geometry: square with margin and lift, padding past the edge, area/Lanczos resizing."""

from __future__ import annotations

import numpy as np
import pytest

from curate.errors import InvalidArgument
from detect.faces.boxes import Box, iou
from detect.faces.geometry import CropSettings, crop_box, cut, pad_colour, resize


def test_crop_box_is_square_with_margin_and_lift():
    face = Box(100, 200, 200, 300)  # 100 px face centred at (150, 250)
    assert crop_box(face, CropSettings(margin=0.5, lift=0.1)) == (50, 140, 250, 340)
    assert crop_box(face, CropSettings(margin=0.0, lift=0.0)) == (100, 200, 200, 300)
    tall = Box(0, 0, 50, 100)  # a non-square box: the square covers its longer side
    x0, y0, x1, y1 = crop_box(tall, CropSettings(margin=0.0, lift=0.0))
    assert x1 - x0 == y1 - y0 == 100 and (x0 + x1) / 2 == 25


def test_cut_pads_past_the_edge_instead_of_cutting():
    image = np.full((10, 10, 3), 50, np.uint8)
    image[0, :] = 200  # the top row, which replicate padding copies upward
    pixels, padded = cut(image, (-5, -5, 5, 5), "#ff0000")
    assert padded and pixels.shape == (10, 10, 3)
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[9, 9]) == (50, 50, 50)
    replicated, _ = cut(image, (0, -3, 10, 7), "replicate")
    assert replicated.shape == (10, 10, 3) and (replicated[:4] == 200).all() and (replicated[4:] == 50).all()
    inside, padded = cut(image, (2, 2, 6, 6), "replicate")
    assert not padded and inside.shape == (4, 4, 3)


def test_resize_methods_and_sizes():
    big = np.zeros((512, 512, 3), np.uint8)
    big[:, 256:] = 255
    small = resize(big, 256)
    assert small.shape == (256, 256, 3) and small[0, 0, 0] == 0 and small[0, 255, 0] == 255
    grown = resize(np.full((200, 200, 3), 77, np.uint8), 256)
    assert grown.shape == (256, 256, 3) and (grown == 77).all()


@pytest.mark.parametrize("bad", ["mauve", "#12345", "1,2", "300,0,0"])
def test_bad_pad_colours_are_rejected(bad):
    with pytest.raises(InvalidArgument, match="--pad"):
        CropSettings(pad=bad)


def test_settings_validation_and_colours():
    assert pad_colour("#00ff80") == (0, 255, 128) and pad_colour("1,2,3") == (1, 2, 3)
    assert pad_colour("replicate") is None
    with pytest.raises(InvalidArgument, match="--min-face"):
        CropSettings(min_face=0)
    with pytest.raises(InvalidArgument, match="--size"):
        CropSettings(size=4)


def test_iou():
    assert iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou(Box(0, 0, 10, 10), Box(20, 20, 30, 30)) == 0.0
