"""Fetch one image: stream to a temporary file, check it every way we can, land it content-addressed."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

from crawl.http import FetchError, HttpClient
from curate.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageCheckError,
    ImageInfo,
    check_signature,
    inspect_image,
)
from curate.workspace import Workspace, land

CHUNK = 1 << 16


@dataclass(frozen=True)
class StoredImage:
    """An original that passed every check and lies at `path` in the workspace."""

    image_id: str  # md5 hex of the bytes
    path: Path
    info: ImageInfo
    size: int
    reused: bool  # already stored (another post, another query, an earlier run): nothing was fetched


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def store_file(ws: Workspace, tmp: Path, digest: str, size: int, limits: Limits) -> StoredImage:
    """Check the finished temporary file and move it to `images/ab/<md5>.<ext>` (raises ImageCheckError)."""
    info = inspect_image(tmp, max_pixels=limits.max_pixels)
    dest = land(tmp, ws.image_path(digest, info.extension))
    return StoredImage(digest, dest, info, size, reused=False)


def reuse_stored(ws: Workspace, md5: str, limits: Limits) -> StoredImage | None:
    """The already-stored original with this md5, re-inspected, or None if there is none."""
    path = ws.find_image(md5)
    if path is None:
        return None
    try:
        info = inspect_image(path, max_pixels=limits.max_pixels)
    except ImageCheckError:
        return None  # cannot happen for files we landed; fetch again rather than trust it
    return StoredImage(md5, path, info, path.stat().st_size, reused=True)


def download_image(
    http: HttpClient,
    ws: Workspace,
    url: str,
    scratch: Path,
    *,
    expected_md5: str | None,
    limits: Limits = Limits(),
    reuse: bool = True,
) -> StoredImage:
    """Download `url` into the workspace; raises FetchError or ImageCheckError with the manifest's code."""
    if reuse and expected_md5:
        stored = reuse_stored(ws, expected_md5, limits)
        if stored is not None:
            return stored
    tmp = scratch / uuid.uuid4().hex
    try:
        digest, size = http.call(url, lambda r: _stream_to(r, tmp, limits.max_bytes), stream=True)
        if expected_md5 and digest != expected_md5:
            check_signature(tmp)  # an error page served as the image says more than its md5 does
            raise FetchError("md5_mismatch", f"md5 of the bytes is {digest}, the board says {expected_md5}")
        return store_file(ws, tmp, digest, size, limits)
    finally:
        tmp.unlink(missing_ok=True)


def _stream_to(response: requests.Response, tmp: Path, max_bytes: int) -> tuple[str, int]:
    declared = response.headers.get("Content-Length")
    expected = int(declared) if declared and declared.isdigit() else None
    if expected is not None and expected > max_bytes:
        raise FetchError("too_large", f"{expected:,} bytes announced, the limit is {max_bytes:,}")
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(tmp, "wb") as handle:
        for chunk in response.iter_content(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError("too_large", f"more than {max_bytes:,} bytes")
            digest.update(chunk)
            handle.write(chunk)
    # A body that ends early on a kept-alive connection; compressed bodies are measured by urllib3 itself.
    if expected is not None and size != expected and not response.headers.get("Content-Encoding"):
        raise FetchError("truncated", f"got {size:,} of {expected:,} bytes", retryable=True)
    return digest.hexdigest(), size
