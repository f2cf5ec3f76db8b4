"""Is this really an image? Signature sniffing and a decode check with a decompression-bomb guard."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

# Pillow's own limit: above it an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp", "tiff": "tif"}
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
_TEXT_STARTS = (b"<", b"{", b"[", b"<!doctype", b"<html", b"<?xml")
_EXIF_ORIENTATION = 0x0112


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
    """Decode the first frame of the file at `path` and count its frames; raises ImageCheckError."""
    from PIL import Image, UnidentifiedImageError

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
                if fmt == "jpeg":
                    # DCT scaling decodes every byte of the stream at 1/8 size: same check, far less work.
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
                frames = int(getattr(image, "n_frames", 1))
                if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                    width, height = height, width
    except ImageCheckError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageCheckError("decompression_bomb", str(err)) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageCheckError("decode_error", f"{fmt} does not decode: {err}") from err
    return ImageInfo(fmt, width, height, frames)


def _excerpt(head: bytes) -> str:
    return head.decode("utf-8", "replace").strip()[:32]
