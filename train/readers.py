"""Where a training set's encoded images live (a zip, a folder, Parquet shards), read by index.

A source is picklable and opens its files lazily in the process that reads them, so every DataLoader
worker, forked or spawned, gets handles of its own (a zip handle shared across a fork would share
its file offset). Decoding to RGB pixels is `decode_rgb`, the same for every source.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from curate.images import flat_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BLOCK = 256  # images per unit of work when nothing physical (a Parquet row group) sets one
Header = tuple[int, int, int]  # width, height, encoded bytes
_PNG = b"\x89PNG\r\n\x1a\n"
_HEAD = 64  # bytes read for a PNG's header: signature and IHDR end at byte 33


class UnreadableImage(Exception):
    """An image whose bytes are missing or do not decode; `name` says which."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def is_image_name(name: str) -> bool:
    """Whether a file name ends in one of IMAGE_SUFFIXES (os.path, not pathlib: it runs per file)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (its CRC checked), or None when `head` is not one."""
    if len(head) < 33 or head[:8] != _PNG or head[12:16] != b"IHDR":
        return None
    if zlib.crc32(head[12:29]) != int.from_bytes(head[29:33], "big"):
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def header_size(head: bytes, whole: Any) -> tuple[int, int]:
    """An image's size: parsed from a PNG's first bytes, else from Pillow's header read of `whole`
    (a path or a file object; Pillow reads headers only). Raises OSError or ValueError."""
    from PIL import Image

    size = png_size(head)
    if size is not None:
        return size
    with Image.open(whole) as image:
        return image.size


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """8-bit RGB pixels [3, H, W] of an encoded image: EXIF orientation applied, greyscale and 16-bit
    converted, transparency flattened on white as `curate export` does. Raises UnreadableImage."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
            pixels = np.asarray(flat_rgb(image))
    except Exception as exc:  # a decoder meeting broken bytes may raise anything
        raise UnreadableImage(name, f"does not decode ({exc or type(exc).__name__})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class Source:
    """Encoded images by index: `names[i]`, `read(i)`, and header scans over blocks of indices."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def read(self, index: int) -> bytes:
        raise NotImplementedError

    def blocks(self) -> list[range]:
        """Ranges of indices that are cheap to read together, covering every image once in order."""
        return [range(start, min(start + BLOCK, len(self))) for start in range(0, len(self), BLOCK)]

    def iter_block(self, block: range) -> Iterator[tuple[int, bytes]]:
        for index in block:
            yield index, self.read(index)

    def headers(self, block: range) -> list[Header | str]:
        """Each image's (width, height, bytes), or why it does not open."""
        out: list[Header | str] = []
        for index in block:
            try:
                out.append(self._header(index))
            except UnreadableImage as exc:
                out.append(exc.reason)
            except (OSError, ValueError, SyntaxError) as exc:
                out.append(f"not a readable image ({exc or type(exc).__name__})")
        return out

    def _header(self, index: int) -> Header:
        data = self.read(index)
        return (*header_size(data[:_HEAD], io.BytesIO(data)), len(data))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class FolderSource(Source):
    """Image files under `root`, named by their relative paths."""

    def __init__(self, root: Path, names: list[str]):
        self.root, self.names = root, names

    def read(self, index: int) -> bytes:
        try:
            return (self.root / self.names[index]).read_bytes()
        except OSError as exc:
            raise UnreadableImage(self.names[index], f"cannot be read ({exc.strerror or exc})") from None

    def _header(self, index: int) -> Header:
        path = self.root / self.names[index]
        with open(path, "rb") as handle:
            head = handle.read(_HEAD)
            handle.seek(0)
            return (*header_size(head, handle), os.fstat(handle.fileno()).st_size)


class ZipSource(Source):
    """Members of a zip read by offset (one pread for the local header, one for the data), so a
    worker holds a file descriptor and three numbers per image rather than a ZipFile's index."""

    def __init__(self, path: Path, infos: list[zipfile.ZipInfo]):
        self.path = path
        self.names = [info.filename for info in infos]
        self.offsets = np.array([info.header_offset for info in infos], dtype=np.int64)
        self.packed = np.array([info.compress_size for info in infos], dtype=np.int64)
        self.sizes = np.array([info.file_size for info in infos], dtype=np.int64)
        self.methods = np.array([info.compress_type for info in infos], dtype=np.int16)
        self.encrypted = {info.filename for info in infos if info.flag_bits & 0x1}

    @classmethod
    def open(cls, path: Path) -> tuple[ZipSource, bytes | None]:
        """The zip's images, sorted by name as NVlabs' loader sorts them, and its dataset.json."""
        with zipfile.ZipFile(path) as archive:
            infos = [
                info for info in archive.infolist() if not info.is_dir() and is_image_name(info.filename)
            ]
            meta = archive.read("dataset.json") if "dataset.json" in archive.NameToInfo else None
        infos.sort(key=lambda info: info.filename)
        return cls(path, infos), meta

    def _fd(self) -> int:
        if getattr(self, "_pid", None) != os.getpid():
            self._descriptor, self._pid, self._lock = (
                os.open(self.path, os.O_RDONLY),
                os.getpid(),
                threading.Lock(),
            )
        return self._descriptor

    def _pread(self, size: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._fd(), size, offset)
        fd = self._fd()
        with self._lock:  # no pread on this platform: seek and read under a lock
            os.lseek(fd, offset, os.SEEK_SET)
            return os.read(fd, size)

    def _data_start(self, index: int) -> int:
        name = self.names[index]
        if name in self.encrypted:
            raise UnreadableImage(name, "is encrypted in the zip")
        local = self._pread(30, int(self.offsets[index]))
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise UnreadableImage(name, "has a damaged zip entry")
        return (
            int(self.offsets[index])
            + 30
            + int.from_bytes(local[26:28], "little")
            + int.from_bytes(local[28:30], "little")
        )

    def read(self, index: int) -> bytes:
        name, method = self.names[index], int(self.methods[index])
        raw = self._pread(int(self.packed[index]), self._data_start(index))
        if method == zipfile.ZIP_STORED:
            return raw
        if method == zipfile.ZIP_DEFLATED:
            try:
                return zlib.decompress(raw, -15)
            except zlib.error as exc:
                raise UnreadableImage(name, f"does not inflate ({exc})") from None
        with zipfile.ZipFile(self.path) as archive:  # bzip2, lzma: rare enough for the slow way
            return archive.read(name)

    def _header(self, index: int) -> Header:
        if int(self.methods[index]) == zipfile.ZIP_STORED:
            head = self._pread(min(_HEAD, int(self.packed[index])), self._data_start(index))
            size = png_size(head)
            if size is not None:
                return (*size, int(self.sizes[index]))
        data = self.read(index)
        return (*header_size(data[:_HEAD], io.BytesIO(data)), len(data))


class ParquetSource(Source):
    """Images in the `image` column of Parquet files (the datasets library's struct of `bytes` and
    `path`, or plain binary), addressed by (file, row group, row). Reads go a row group at a time,
    with a few row groups kept per process, so a set larger than memory is never read whole."""

    cache_bytes = 256 << 20  # row groups of image bytes kept per process

    def __init__(self, root: Path, files: list[Path], where: np.ndarray):
        self.root, self.files = root, files
        self.where = where  # [N, 3] int64: file, row group, row within the group
        self.names = [f"{files[f].relative_to(root).as_posix()}#{r}" for f, _, r in self._file_rows()]

    def _file_rows(self) -> Iterator[tuple[int, int, int]]:
        """(file, row group, row within the file) of each image, for names people can find."""
        starts: dict[tuple[int, int], int] = {}
        for f, g, r in self.where.tolist():
            if (f, g) not in starts:
                meta = self._file(f).metadata
                starts[(f, g)] = sum(meta.row_group(k).num_rows for k in range(g))
            yield f, g, starts[(f, g)] + r

    def _file(self, number: int) -> Any:
        import pyarrow.parquet as pq

        if getattr(self, "_pid", None) != os.getpid():
            self._handles, self._groups, self._pid = {}, OrderedDict(), os.getpid()
            self._lock = threading.Lock()
        if number not in self._handles:  # no pre-buffering: stream pages, never a whole row group
            self._handles[number] = pq.ParquetFile(self.files[number], pre_buffer=False, buffer_size=1 << 20)
        return self._handles[number]

    def blocks(self) -> list[range]:
        keys = self.where[:, 0] * (1 << 32) + self.where[:, 1]
        edges = [0, *(np.flatnonzero(np.diff(keys)) + 1).tolist(), len(self)]
        return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]

    def _group(self, number: int, group: int) -> Any:
        """A row group's `image` column (Arrow, not Python objects), from the per-process cache."""
        handle = self._file(number)
        key = (number, group)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key]
        column = handle.read_row_group(group, columns=["image"]).column("image")
        with self._lock:
            self._groups[key] = column
            while len(self._groups) > 1 and sum(c.nbytes for c in self._groups.values()) > self.cache_bytes:
                self._groups.popitem(last=False)
        return column

    def read(self, index: int) -> bytes:
        f, g, r = (int(v) for v in self.where[index])
        value = self._group(f, g)[r]
        data = value["bytes"].as_py() if value.is_valid and hasattr(value, "keys") else value.as_py()
        if not data:
            raise UnreadableImage(self.names[index], "has no image bytes")
        return data

    def _stream(self, block: range) -> Iterator[tuple[int, bytes | None]]:
        """The block's images in one streaming pass over its row group (a block is one row group)."""
        f, g = (int(v) for v in self.where[block.start, :2])
        wanted = {int(self.where[i, 2]): i for i in block}
        row = 0
        for batch in self._file(f).iter_batches(batch_size=64, row_groups=[g], columns=["image"]):
            for data in _image_bytes(batch.column("image")):
                if row in wanted:
                    yield wanted[row], data
                row += 1

    def iter_block(self, block: range) -> Iterator[tuple[int, bytes]]:
        for index, data in self._stream(block):
            if not data:
                raise UnreadableImage(self.names[index], "has no image bytes")
            yield index, data

    def headers(self, block: range) -> list[Header | str]:
        out: list[Header | str] = []
        for _, data in self._stream(block):
            if not data:
                out.append("has no image bytes")
                continue
            try:
                out.append((*header_size(data[:_HEAD], io.BytesIO(data)), len(data)))
            except (OSError, ValueError, SyntaxError) as exc:
                out.append(f"not a readable image ({exc or type(exc).__name__})")
        return out


def _image_bytes(column: Any) -> list[bytes | None]:
    """The encoded images of an `image` column: a struct's `bytes` field, or the binary values."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        return [v for chunk in column.chunks for v in _image_bytes(chunk)]
    if not pa.types.is_struct(column.type):
        return column.to_pylist()
    values = column.field("bytes").to_pylist()
    if column.null_count:  # a null struct's fields are not null themselves
        values = [
            None if missing else v for missing, v in zip(column.is_null().to_pylist(), values, strict=True)
        ]
    return values
