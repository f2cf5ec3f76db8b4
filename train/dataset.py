"""The images and labels a generator trains on: any layout `curate export` writes, NVlabs' zip, or a
folder of images, checked whole before training starts.

`open_dataset` finds the layout from the path, reads every image's header (on threads) and every
label, and refuses a set that would fail later: no images, mixed or non-square sizes, a side that is
not a power of two, labels missing, ragged or not numbers, an image that does not open.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument
from curate.processes import cpu_count
from curate.progress import StageProgress
from curate.workspace import Workspace
from train.layouts import EXPORT_RECORD, Found, find_layout, read_json
from train.readers import Source, UnreadableImage, decode_rgb

TRAINABLE = ("stylegan", "parquet", "imagefolder")
PROGRESS_FROM = 5000  # images: smaller sets are checked faster than a bar can draw
_SHOWN = 5  # offending files named in one message
MAX_CLASSES = 1 << 16  # a class index beyond is a corrupt label, not a one-hot to allocate


class TrainingSet:
    """N square RGB images of one power-of-two side, with float32 labels [N, C] (C = 0 unconditional).

    Picklable: its files are opened lazily in each process that reads them."""

    def __init__(
        self,
        path: Path,
        format: str,
        source: Source,
        resolution: int,
        labels: np.ndarray,
        label_names: list[str],
        fingerprint: str,
        export: dict | None = None,
    ):
        self.path, self.format, self.source, self.resolution = path, format, source, resolution
        self.labels, self.label_names = labels, label_names
        self.fingerprint, self.export = fingerprint, export  # export: the export.json beside it

    @property
    def num_images(self) -> int:
        return len(self.source)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def label_dim(self) -> int:
        return self.labels.shape[1]

    def name(self, index: int) -> str:
        return self.source.names[index]

    def image(self, index: int) -> np.ndarray:
        """Image `index` as uint8 RGB [3, R, R]."""
        try:
            return self._decoded(index, self.source.read(index))
        except UnreadableImage as exc:
            raise InvalidArgument(f"{self.path}: {exc.name} {exc.reason}") from None

    def blocks(self) -> list[range]:
        """Ranges of indices cheap to read together (a Parquet row group), covering the set in order."""
        return self.source.blocks()

    def images_in(self, block: range) -> Iterator[tuple[int, np.ndarray]]:
        """(index, uint8 [3, R, R]) for each image of a block, read in one pass."""
        try:
            for index, data in self.source.iter_block(block):
                yield index, self._decoded(index, data)
        except UnreadableImage as exc:
            raise InvalidArgument(f"{self.path}: {exc.name} {exc.reason}") from None

    def _decoded(self, index: int, data: bytes) -> np.ndarray:
        pixels = decode_rgb(data, self.source.names[index])
        if pixels.shape != (3, self.resolution, self.resolution):
            raise UnreadableImage(
                self.source.names[index],
                f"decodes to {pixels.shape[2]}×{pixels.shape[1]}, not {self.resolution}² as its header said",
            )
        return pixels

    def labels_tensor(self, device: Any) -> Any:
        """Every image's labels as one float32 tensor [N, C] on `device`."""
        import torch

        return torch.from_numpy(self.labels).to(device)

    def describe(self) -> dict:
        """What a run records about its data, so a resumed run can check it trains on the same set."""
        out = {
            "path": str(self.path),
            "format": self.format,
            "count": self.num_images,
            "resolution": self.resolution,
            "label_dim": self.label_dim,
            "label_names": list(self.label_names),
            "fingerprint": self.fingerprint,
        }
        if self.export:
            out["export"] = {k: self.export.get(k) for k in ("fingerprint", "created_at")}
        return out

    def __repr__(self) -> str:
        return (
            f"TrainingSet({self.format} {self.path}: {self.num_images} images, {self.resolution}², "
            f"{self.label_dim} labels)"
        )


def open_dataset(path: str | Path, *, progress: bool = True, threads: int | None = None) -> TrainingSet:
    """Open and check the training set at `path`: an NVlabs zip, a curate export folder (stylegan,
    parquet or imagefolder), a folder of Parquet files, or a folder of images. Raises InvalidArgument."""
    found = find_layout(Path(path).expanduser().resolve())
    if len(found.source) == 0:
        raise InvalidArgument(f"{found.path}: no images found (looked for {found.looked_for})")
    labels, names = _parse_labels(found)
    sizes = _scan_headers(found, progress, threads)
    resolution = _check_sizes(found, sizes)
    digest = hashlib.sha256(json.dumps([resolution, names]).encode())
    for name, nbytes in zip(found.source.names, sizes[:, 2].tolist(), strict=True):
        digest.update(f"{name}\0{nbytes}\n".encode())
    digest.update(np.ascontiguousarray(labels, dtype="<f4").tobytes())
    return TrainingSet(
        found.path, found.format, found.source, resolution, labels, names, digest.hexdigest(), found.export
    )


def read_labels(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """A training set's labels [N, C] and their names, without opening its images (C = 0 unconditional)."""
    return _parse_labels(find_layout(Path(path).expanduser().resolve()))


def latest_export(workspace: str | Path) -> Path:
    """The newest trainable export under WORKSPACE/export/ (by its export.json's `created_at`)."""
    root = Workspace(Path(workspace).expanduser().resolve()).export
    found = []
    for record_path in sorted(root.glob(f"*/{EXPORT_RECORD}")):
        record = read_json(record_path)
        if record_path.parent.name.startswith(".") or not isinstance(record, dict):
            continue  # an export being built or moved aside
        if record.get("format") in TRAINABLE and (record.get("counts") or {}).get("train"):
            try:
                created = datetime.fromisoformat(str(record.get("created_at"))).timestamp()
            except ValueError:
                created = record_path.stat().st_mtime
            found.append((created, str(record_path.parent)))
    if not found:
        raise InvalidArgument(f"no trainable dataset under {root}: run `curate export` first")
    return Path(max(found)[1])


def _parse_labels(found: Found) -> tuple[np.ndarray, list[str]]:
    """float32 [N, C] from vectors (multi-hot) or class indices (one-hot over max + 1 classes)."""
    count, names, where = len(found.source), found.source.names, f"{found.path}"
    if found.raw_labels is None:
        return np.zeros((count, 0), np.float32), []
    raw = found.raw_labels
    missing = [i for i, label in enumerate(raw) if label is None]
    if missing:
        shown = ", ".join(names[i] for i in missing[:_SHOWN])
        raise InvalidArgument(
            f"{where}: {len(missing)} of {count} images have no label in {found.labels_from}, "
            f"though others do: {shown}{' …' if len(missing) > _SHOWN else ''}"
        )
    if all(_is_int(label) for label in raw):
        classes = np.array(raw, dtype=np.int64)
        if classes.min() < 0:
            bad = int(np.argmin(classes))
            raise InvalidArgument(f"{where}: {names[bad]} has class index {raw[bad]}; classes count from 0")
        if classes.max() >= MAX_CLASSES:
            top = int(np.argmax(classes))
            raise InvalidArgument(
                f"{where}: {names[top]} has class index {raw[top]}, over {MAX_CLASSES - 1:,}"
            )
        labels = np.zeros((count, int(classes.max()) + 1), np.float32)
        labels[np.arange(count), classes] = 1.0
    else:
        for i, label in enumerate(raw):
            if not isinstance(label, (list, tuple)) or not all(_is_number(v) for v in label):
                raise InvalidArgument(
                    f"{where}: the label of {names[i]} is {_excerpt(label)}; a label is a list of numbers "
                    "(multi-hot) or an integer class index, the same kind for every image"
                )
        lengths = Counter(len(label) for label in raw)
        if len(lengths) > 1:
            common = lengths.most_common(1)[0][0]
            odd = next(i for i, label in enumerate(raw) if len(label) != common)
            usual = next(i for i, label in enumerate(raw) if len(label) == common)
            raise InvalidArgument(
                f"{where}: labels of different lengths: {names[odd]} has {len(raw[odd])} values, "
                f"{names[usual]} has {common} (as {lengths[common]} of {count} images do)"
            )
        labels = np.array(raw, dtype=np.float32).reshape(count, -1)
    known = found.label_names
    if known is not None and len(known) != labels.shape[1]:
        raise InvalidArgument(
            f"{where}: labels have {labels.shape[1]} values but the vocabulary names {len(known)} "
            f"({', '.join(known[:_SHOWN])}{' …' if len(known) > _SHOWN else ''})"
        )
    if labels.shape[1] == 0:
        return labels, []
    return labels, list(known) if known else [f"label_{k}" for k in range(labels.shape[1])]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _excerpt(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scan_headers(found: Found, progress: bool, threads: int | None) -> np.ndarray:
    """[N, 3] int64 of width, height and encoded bytes, from every image's header, on threads.
    Raises InvalidArgument naming the images that do not open."""
    source, count = found.source, len(found.source)
    sizes = np.zeros((count, 3), np.int64)
    failed: list[tuple[int, str]] = []
    workers = threads or min(8, cpu_count())  # more contend for the interpreter lock when the disk is fast
    enabled = progress and count >= PROGRESS_FROM
    with (
        StageProgress("check images", total=count, unit="images", enabled=enabled) as bar,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        futures = {pool.submit(source.headers, block): block for block in source.blocks()}
        for future in as_completed(futures):
            block = futures[future]
            for index, header in zip(block, future.result(), strict=True):
                if isinstance(header, str):
                    failed.append((index, header))
                else:
                    sizes[index] = header
            bar.advance(len(block))
    if failed:
        failed.sort()
        shown = "; ".join(f"{source.names[i]} {why}" for i, why in failed[:_SHOWN])
        more = f" (and {len(failed) - _SHOWN} more)" if len(failed) > _SHOWN else ""
        raise InvalidArgument(f"{found.path}: {len(failed)} image(s) do not open: {shown}{more}")
    return sizes


def _check_sizes(found: Found, sizes: np.ndarray) -> int:
    """The set's side: every image square, of one size, a power of two of at least 4."""
    names, where = found.source.names, found.path
    shapes = Counter(map(tuple, sizes[:, :2].tolist()))
    (width, height), common = shapes.most_common(1)[0]
    if len(shapes) > 1:
        odd = int(np.flatnonzero((sizes[:, 0] != width) | (sizes[:, 1] != height))[0])
        usual = int(np.flatnonzero((sizes[:, 0] == width) & (sizes[:, 1] == height))[0])
        raise InvalidArgument(
            f"{where}: images of mixed sizes: {names[odd]} is {sizes[odd, 0]}×{sizes[odd, 1]} but "
            f"{names[usual]} is {width}×{height} (as {common} of {len(names)} are); "
            "export them at one size (curate export --resolution)"
        )
    if width != height:
        raise InvalidArgument(
            f"{where}: images must be square, but they are {width}×{height} (e.g. {names[0]})"
        )
    if width < 4 or width & (width - 1):
        raise InvalidArgument(
            f"{where}: the images are {width}×{width}; StyleGAN2 needs a side that is a power of two "
            "of at least 4 (64, 128, 256, 512, 1024)"
        )
    return int(width)
