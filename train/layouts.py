"""Which layout a path holds, and what it says before any image is opened: the images' source,
their raw labels and the label names. `curate export`'s three layouts, NVlabs' zip (which export's
stylegan layout is), a folder of Parquet files, or a folder of images.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument
from train.readers import IMAGE_SUFFIXES, FolderSource, ParquetSource, Source, ZipSource, is_image_name

EXPORT_RECORD = "export.json"  # what `curate export` writes beside every layout


@dataclass
class Found:
    """A layout found on disk, before checking: its images, raw labels and label names."""

    format: str
    path: Path  # what the images are read from (the zip, the folder)
    source: Source
    raw_labels: list | None  # one per image (None where an image has none); None: unconditional
    label_names: list[str] | None  # from export.json or the Parquet schema
    labels_from: str  # where labels are read, for messages
    looked_for: str  # what counts as an image here, for the "no images" message
    export: dict | None = None


def read_json(path: Path) -> Any:
    """A JSON file's contents, or None when it is missing or not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_layout(path: Path) -> Found:
    """The layout at `path` (resolved), found from what is there."""
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".zip":
            return _open_zip(path)
        if path.suffix.lower() == ".parquet":
            return _open_parquet(path.parent, [path], None)
        raise InvalidArgument(f"{path}: a training set is a .zip, a .parquet file or a folder")
    export = read_json(path / EXPORT_RECORD)
    kind = export.get("format") if isinstance(export, dict) else None
    if kind == "stylegan" or (kind is None and (path / "dataset.zip").is_file()):
        if not (path / "dataset.zip").is_file():
            raise InvalidArgument(f"{path}: export.json says stylegan, but dataset.zip is not there")
        return _open_zip(path / "dataset.zip")
    if kind == "imagefolder" or (kind is None and (path / "train" / "metadata.jsonl").is_file()):
        return _open_imagefolder(path / "train", export)
    if kind is None and (path / "metadata.jsonl").is_file():
        return _open_imagefolder(path, None)
    parquet = _parquet_files(path)
    if kind == "parquet" or (kind is None and parquet):
        return _open_parquet(path, parquet, export)
    return _open_folder(path)


def _visible(root: Path, path: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _parquet_files(path: Path) -> list[Path]:
    """Parquet files under `path` (hidden ones, such as an export's parts in progress, left out);
    only the `train…` ones when the files are named by split, as the datasets library names them."""
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file() and _visible(path, p))
    train = [p for p in files if p.name.startswith("train")]
    return train or files


def _vocabulary(export: dict | None) -> list[str] | None:
    labels = export.get("labels") if isinstance(export, dict) else None
    return [str(name) for name in labels] if isinstance(labels, list) else None


def _open_zip(path: Path) -> Found:
    try:
        source, meta = ZipSource.open(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidArgument(f"{path} is not a readable zip: {exc}") from None
    raw = _dataset_json(path, meta, source.names, "dataset.json in the zip")
    export = read_json(path.parent / EXPORT_RECORD)
    export = export if isinstance(export, dict) else None
    looked = f"entries ending {', '.join(IMAGE_SUFFIXES)} in the zip"
    return Found(
        "stylegan", path, source, raw, _vocabulary(export), f"{path.name}/dataset.json", looked, export
    )


def _dataset_json(where: Path, meta: bytes | None, names: list[str], what: str) -> list | None:
    """Per-image labels from NVlabs' dataset.json ({"labels": [[name, label], ...]} or null)."""
    if meta is None:
        return None
    try:
        payload = json.loads(meta)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {what} is not JSON ({exc})") from None
    labels = payload.get("labels") if isinstance(payload, dict) else None
    if not labels:
        return None  # null, absent or empty: unconditional
    try:
        lookup = dict(labels)
    except (TypeError, ValueError):
        raise InvalidArgument(f'{where}: {what} must hold "labels": [[name, label], ...]') from None
    return [lookup.get(name.replace("\\", "/")) for name in names]


def _open_folder(root: Path) -> Found:
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root)
        names += [(base / f).as_posix() for f in files if not f.startswith(".") and is_image_name(f)]
    names.sort()
    meta_path = root / "dataset.json"
    meta = meta_path.read_bytes() if meta_path.is_file() else None
    raw = _dataset_json(root, meta, names, "dataset.json")
    looked = f"files ending {', '.join(IMAGE_SUFFIXES)}, searched recursively"
    return Found("folder", root, FolderSource(root, names), raw, None, "dataset.json", looked)


def _open_imagefolder(folder: Path, export: dict | None) -> Found:
    """A curate imagefolder export's train/ (or any folder with a datasets-style metadata.jsonl)."""
    names, raw, labelled = [], [], False
    meta = folder / "metadata.jsonl"
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidArgument(f"{meta} cannot be read: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            names.append(str(record["file_name"]))
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument(f"{meta} line {number}: not a JSON object with a file_name") from None
        labelled |= "label_vector" in record
        raw.append(record.get("label_vector"))
    looked = f"rows in {meta.name}"
    source = FolderSource(folder, names)
    return Found(
        "imagefolder",
        folder,
        source,
        raw if labelled else None,
        _vocabulary(export),
        meta.name,
        looked,
        export,
    )


def _open_parquet(root: Path, files: list[Path], export: dict | None) -> Found:
    """Rows of split `train` (all rows without a split column) of Parquet files with an `image` column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    where, raw, vocabularies, labelled = [], [], set(), False
    for number, path in enumerate(files):
        try:
            handle = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise InvalidArgument(f"{path} is not a readable Parquet file: {exc}") from None
        schema = handle.schema_arrow
        if "image" not in schema.names:
            raise InvalidArgument(f"{path} has no `image` column (columns: {', '.join(schema.names)})")
        metadata = schema.metadata or {}
        if b"curate.vocabulary" in metadata:
            try:
                vocabularies.add(tuple(str(v) for v in json.loads(metadata[b"curate.vocabulary"])))
            except (ValueError, TypeError):
                raise InvalidArgument(f"{path}: its curate.vocabulary metadata is not a JSON list") from None
        columns = [c for c in ("split", "label_vector") if c in schema.names]
        labelled |= "label_vector" in columns
        for group in range(handle.num_row_groups):
            table = handle.read_row_group(group, columns=columns) if columns else None
            if "split" in columns:
                rows = [r for r, s in enumerate(table.column("split").to_pylist()) if s == "train"]
            else:
                rows = list(range(handle.metadata.row_group(group).num_rows))
            where += [(number, group, r) for r in rows]
            vectors = table.column("label_vector").to_pylist() if "label_vector" in columns else None
            raw += [vectors[r] if vectors is not None else None for r in rows]
    if len(vocabularies) > 1:
        raise InvalidArgument(
            f"{root}: the Parquet files carry different label vocabularies (curate.vocabulary)"
        )
    names = list(vocabularies.pop()) if vocabularies else _vocabulary(export)
    source = ParquetSource(root, files, np.array(where, dtype=np.int64).reshape(-1, 3))
    looked = f"rows of split 'train' in {len(files)} Parquet file(s)" if files else "*.parquet files"
    return Found("parquet", root, source, raw if labelled else None, names, "label_vector", looked, export)
