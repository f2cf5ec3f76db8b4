"""Crop geometry: a square around the face with margin for hair, padded past the image edge, resized."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curate.errors import InvalidArgument
from detect.faces.boxes import Box

_NAMED_COLOURS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}


@dataclass(frozen=True)
class CropSettings:
    """How a face box becomes a crop.

    The crop side is the face side × (1 + 2·margin), and its centre sits `lift` face sides above the
    face's centre: detector boxes span brow to chin, while hair, ears and ornaments reach well above
    and beside them (the portrait framing of gwern's Danbooru portraits and the Hambir et al. set).
    """

    size: int = 256
    margin: float = 0.5
    lift: float = 0.1
    min_face: float = 64.0  # shorter face side, original pixels; smaller faces get `too_small` rows
    pad: str = "replicate"  # replicate | reflect | white | black | grey | #rrggbb | r,g,b

    def __post_init__(self) -> None:
        if self.size < 8:
            raise InvalidArgument(f"--size must be at least 8 pixels, got {self.size}")
        if not 0 <= self.margin <= 4:
            raise InvalidArgument(f"--margin must be between 0 and 4 face sides, got {self.margin}")
        if not -1 <= self.lift <= 1:
            raise InvalidArgument(f"--lift must be between -1 and 1 face sides, got {self.lift}")
        if self.min_face < 1:
            raise InvalidArgument(f"--min-face must be at least 1 pixel, got {self.min_face}")
        pad_colour(self.pad)  # validate early: a typo should fail before hours of work


def pad_colour(pad: str) -> tuple[int, int, int] | None:
    """The RGB colour to pad with, or None for edge-copying modes (replicate, reflect)."""
    text = pad.strip().lower()
    if text in ("replicate", "reflect"):
        return None
    if text in _NAMED_COLOURS:
        return _NAMED_COLOURS[text]
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = tuple(int(v) for v in text.split(","))
        if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
            return parts  # type: ignore[return-value]
    except ValueError:
        pass
    raise InvalidArgument(f"--pad must be replicate, reflect, a colour name, #rrggbb or r,g,b; got {pad!r}")


def crop_box(face: Box, settings: CropSettings) -> tuple[int, int, int, int]:
    """The square crop `(x0, y0, x1, y1)` for a face, in the face box's pixels; may reach past the image."""
    face_side = max(face.width, face.height)
    side = max(1, math.ceil(face_side * (1 + 2 * settings.margin)))
    cx = (face.x0 + face.x1) / 2
    cy = (face.y0 + face.y1) / 2 - settings.lift * face_side
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    return x0, y0, x0 + side, y0 + side


def cut(rgb: np.ndarray, box: tuple[int, int, int, int], pad: str) -> tuple[np.ndarray, bool]:
    """The pixels of `box`, padded where it leaves the image; also whether any padding was needed."""
    import cv2

    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = box
    inner = rgb[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y1 - height), max(0, x1 - width)
    if not (top or left or bottom or right):
        return inner, False
    colour = pad_colour(pad)
    if colour is not None:
        border, value = cv2.BORDER_CONSTANT, colour
    else:
        # reflect needs the band to be thinner than the image; fall back to replicate when it is not
        reflect = (
            pad.strip().lower() == "reflect"
            and max(top, bottom) < inner.shape[0]
            and max(left, right) < inner.shape[1]
        )
        border, value = (cv2.BORDER_REFLECT_101 if reflect else cv2.BORDER_REPLICATE), None
    return cv2.copyMakeBorder(inner, top, bottom, left, right, border, value=value), True


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Square pixels to `size`: area averaging when shrinking, Lanczos when (slightly) enlarging."""
    import cv2

    side = pixels.shape[0]
    if side == size:
        return np.ascontiguousarray(pixels)
    method = cv2.INTER_AREA if side > size else cv2.INTER_LANCZOS4
    return cv2.resize(pixels, (size, size), interpolation=method)
