"""Decoding originals for detection and cropping: orientation, colour modes, first frame, reduced size.

Every original becomes 8-bit RGB the way a viewer shows it: EXIF orientation applied, CMYK and 16-bit
converted, alpha flattened on white, the first frame of an animation. A JPEG is decoded straight at a
reduced size (DCT scaling) when the detector asks for less than full resolution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.images import DEFAULT_MAX_PIXELS, ImageCheckError, check_signature

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# A pixel is coloured when its channels differ by more than this; an image is monochrome when almost
# none are (greyscale, pencil sketches, screentone), which later stages may filter on.
_CHROMA_LEVEL = 32
_COLOURED_SHARE = 0.02


@dataclass(frozen=True)
class Decoded:
    """An original as 8-bit RGB, possibly reduced: `rgb` is `scale` times the displayed size."""

    rgb: np.ndarray  # H×W×3 uint8, C-contiguous
    width: int  # the original's displayed size (EXIF orientation applied)
    height: int
    scale: float  # rgb width / original width
    frames: int
    mode: str  # Pillow's mode of the stored pixels, e.g. RGB, CMYK, I;16, RGBA, P
    is_monochrome: bool


ScaleFor = Callable[[int, int], float]


def decode(
    path: str | Path, *, scale_for: ScaleFor | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode `path` to RGB; `scale_for(width, height)` ≤ 1 asks for a smaller copy (ImageCheckError)."""
    from PIL import Image, ImageOps

    path = Path(path)
    fmt = check_signature(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PILLOW_FORMATS[fmt]]) as image:
                stored_w, stored_h = image.size
                if stored_w * stored_h > max_pixels:
                    raise ImageCheckError(
                        "decompression_bomb", f"{stored_w}x{stored_h} exceeds the {max_pixels:,}-pixel limit"
                    )
                frames = int(getattr(image, "n_frames", 1))
                mode = image.mode
                exif = image.getexif()
                turned = exif.get(0x0112) in (5, 6, 7, 8)
                width, height = (stored_h, stored_w) if turned else (stored_w, stored_h)
                scale = _clamp_scale(scale_for(width, height) if scale_for else 1.0)
                if fmt == "jpeg" and scale < 1.0:
                    want = (max(1, math.ceil(stored_w * scale)), max(1, math.ceil(stored_h * scale)))
                    image.draft(image.mode if image.mode in ("RGB", "L") else None, want)
                image.seek(0)
                image.load()
                oriented = ImageOps.exif_transpose(image) if turned or exif.get(0x0112) else image
                rgb = _to_rgb(oriented)
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageCheckError("decompression_bomb", str(err)) from err
    except Exception as err:  # a decoder meeting hostile bytes may raise anything: the file is broken
        raise ImageCheckError("decode_error", f"{fmt} does not decode: {err or type(err).__name__}") from err
    rgb = _resize_to(rgb, width, height, scale)
    monochrome = mode in _GREY_MODES or is_monochrome(rgb)
    return Decoded(rgb, width, height, rgb.shape[1] / width, frames, mode, monochrome)


def _clamp_scale(scale: float) -> float:
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"decode scale must be positive, got {scale}")
    return min(scale, 1.0)


def _resize_to(rgb: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    """Area-resize to `scale` of the original unless the decoder already delivered that size."""
    target_w, target_h = max(1, round(width * scale)), max(1, round(height * scale))
    if rgb.shape[1] <= target_w or rgb.shape[0] <= target_h:
        return rgb
    import cv2

    return cv2.resize(rgb, (target_w, target_h), interpolation=cv2.INTER_AREA)


def _to_rgb(image) -> np.ndarray:
    """8-bit RGB pixels of any Pillow mode, alpha flattened on white."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        grey = _to_8bit(np.asarray(image))
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info:  # palette entries, tRNS colours
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV
    pixels = np.asarray(image)
    if image.mode == "RGBA":
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        flat = pixels[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.rint(flat).astype(np.uint8))
    return np.ascontiguousarray(pixels[:, :, :3])


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """16-bit (or float) greyscale to 0–255: 16-bit samples are scaled by 255/65535."""
    if values.dtype == np.uint8:
        return values
    if values.dtype.kind == "f":
        top = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
        return np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
    if values.size and int(values.max()) > 255:
        return np.rint(values.astype(np.float64) * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
    return values.clip(0, 255).astype(np.uint8)


def is_monochrome(rgb: np.ndarray) -> bool:
    """True when almost no pixel is coloured: greyscale art, sketches, manga screentone."""
    step = max(1, max(rgb.shape[:2]) // 128)  # a strided sample is plenty and costs nothing
    sample = rgb[::step, ::step].astype(np.int16)
    chroma = sample.max(axis=2) - sample.min(axis=2)
    return float(np.mean(chroma > _CHROMA_LEVEL)) < _COLOURED_SHARE
