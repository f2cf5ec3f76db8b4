"""PNG files written on threads while the GPU makes the next batch.

Pillow's PNG encoder holds the interpreter lock while it compresses, so its threads take turns; here
each image is one `zlib.compress` call (which releases the lock) over rows filtered with PNG's `Sub`
filter in numpy: truly parallel, and about 40% faster than Pillow at the same zlib level for files
about 7% larger.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from threading import BoundedSemaphore
from typing import Any

import numpy as np

from curate.processes import cpu_count

LEVEL = 3  # zlib level: 40% of level 6's time for files about 4% larger
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(image: np.ndarray, level: int = LEVEL) -> bytes:
    """An 8-bit RGB PNG of a uint8 HWC array."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 HWC RGB, got {image.dtype} {image.shape}")
    height, width, _ = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 1  # filter type Sub: each byte minus the same channel of the pixel to its left
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # wraps modulo 256, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(filtered.tobytes(), level)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, image: np.ndarray, level: int = LEVEL) -> None:
    """Write without a temporary name: the folder being filled is itself renamed into place at the end."""
    data = png_bytes(image, level)
    with open(path, "wb") as handle:
        handle.write(data)


class PngWriter:
    """A few threads writing PNGs (and other small jobs) while the caller goes on; at most `pending`
    wait, so a slow disk slows generation instead of filling memory."""

    def __init__(self, threads: int | None = None, pending: int = 256):
        workers = threads or max(2, min(8, cpu_count() - 1))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="png")
        self.slots = BoundedSemaphore(pending)
        self.futures: list[Future] = []

    def put(self, path: Path, image: np.ndarray) -> None:
        self.submit(write_png, path, image)

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        self.slots.acquire()
        future = self.pool.submit(job, *args)
        future.add_done_callback(lambda _: self.slots.release())
        self.futures.append(future)
        if len(self.futures) > 4096:  # forget the finished, raising the first error early
            for done in [f for f in self.futures if f.done()]:
                done.result()
            self.futures = [f for f in self.futures if not f.done()]

    def close(self) -> None:
        """Wait for every job; raise the first error."""
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def abandon(self) -> None:
        """Drop the jobs not started; wait for those running (they write into a folder about to go)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
