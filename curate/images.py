"""Is this really an image? Signature sniffing and a decode check with a decompression-bomb guard.

Shared by every stage that opens originals (crawl and ingest check them, crop decodes them); and
`flat_rgb`, the RGB every writer and network of crops or example images sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.workspace import IMAGE_EXTENSIONS

# Pillow's own limit: above it an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

EXTENSIONS = dict(zip(("jpeg", "png", "gif", "webp", "bmp", "tiff"), IMAGE_EXTENSIONS, strict=True))
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
_TEXT_STARTS = (b"<", b"{", b"[", b"<!doctype", b"<html", b"<?xml")
_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class ImageCheckError(Exception):
    """Bytes that are not a usable image; `code` goes into the manifest."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str  # jpeg | png | gif | webp | bmp | tiff
    width: int  # as displayed: EXIF orientation applied
    height: int
    frames: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def sniff(head: bytes) -> str | None:
    """The image format its first bytes announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def check_signature(path: Path) -> str:
    """The format the file's first bytes announce; raises ImageCheckError for empty, text or unknown files."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    if not head:
        raise ImageCheckError("decode_error", "empty file (0 bytes)")
    fmt = sniff(head)
    if fmt is None:
        if head.lstrip().lower().startswith(_TEXT_STARTS):
            raise ImageCheckError("not_image", f"a text/HTML page, not an image: {_excerpt(head)}")
        raise ImageCheckError("unsupported_format", f"unknown file signature {head[:12].hex()}")
    return fmt


def inspect_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check that the file at `path` is a whole, sane image and measure it; raises ImageCheckError.

    PNG: every chunk's CRC-32 is verified, which catches truncation and corruption in transit at a tenth
    of the cost of inflating the pixels. JPEG has no checksums, so it is decoded, at 1/8 scale (DCT
    scaling still reads every byte of the stream). Other formats decode their first frame.
    """
    from PIL import Image

    fmt = check_signature(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PILLOW_FORMATS[fmt]]) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageCheckError(
                        "decompression_bomb", f"{width}x{height} exceeds the {max_pixels:,}-pixel limit"
                    )
                if fmt == "png":
                    frames = int(getattr(image, "n_frames", 1))
                    exif = image.info.get("exif")  # getexif() would inflate the whole image to find it
                    orientation = _orientation_of(exif)
                    image.verify()
                else:
                    if fmt == "jpeg":
                        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                    image.load()
                    frames = int(getattr(image, "n_frames", 1))
                    orientation = image.getexif().get(_EXIF_ORIENTATION)
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageCheckError("decompression_bomb", str(err)) from err
    except Exception as err:  # a decoder meeting hostile bytes may raise anything: the file is broken
        raise ImageCheckError("decode_error", f"{fmt} does not decode: {err or type(err).__name__}") from err
    if orientation in (5, 6, 7, 8):  # rotated a quarter turn: displayed with width and height swapped
        width, height = height, width
    return ImageInfo(fmt, width, height, frames)


def flat_rgb(image: Any) -> Any:
    """An RGB copy of a Pillow image as a viewer shows it: alpha, a palette's transparent entries or a
    transparent colour (PNG tRNS) flattened on white.

    The copy never carries `info["transparency"]`: Pillow keeps it through convert("RGB"), and PNG then
    writes it back (an opaque colour of the picture turns transparent) or raises (the key of 1-bit or
    16-bit grey does not fit RGB). Wide greyscale (16-bit, 32-bit, float) is scaled to 8 bits, not clipped
    as convert("RGB") would (a 16-bit scan would come out nearly white).
    """
    from PIL import Image

    if image.mode in _WIDE_GREY_MODES and "transparency" not in image.info:
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0
        if image.mode == "F":  # floats in 0–1 or in 0–255
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _orientation_of(exif: bytes | None) -> int | None:
    if not exif:
        return None
    from PIL import Image

    data = Image.Exif()
    data.load(exif)
    return data.get(_EXIF_ORIENTATION)


def _excerpt(head: bytes) -> str:
    return head.decode("utf-8", "replace").strip()[:32]
