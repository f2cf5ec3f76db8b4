"""`curate export`: the selected faces, at one square resolution, in the layout people train on.

The export is built under a hidden temporary name beside `out` and renamed into place when whole.
`export.json` records the options and a fingerprint of what was selected, so running the same export
again over an unchanged workspace does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curate.errors import CurateError, InvalidArgument
from curate.export.card import dataset_card
from curate.export.select import Selection, SelectOptions, select_samples
from curate.export.writers import Encoded, write_imagefolder, write_parquet, write_stylegan
from curate.images import flat_rgb
from curate.labels import VOCABULARY_FILE, read_vocabulary
from curate.manifest import now_utc
from curate.processes import cpu_count
from curate.progress import StageProgress
from curate.workspace import Workspace

FORMATS = ("parquet", "stylegan", "imagefolder")
RECORD = "export.json"
WRITERS = {"parquet": write_parquet, "stylegan": write_stylegan, "imagefolder": write_imagefolder}


@dataclass
class ExportOptions:
    format: str = "parquet"
    out: Path | None = None  # default: <workspace>/export/<format>
    resolution: int = 256  # square side; a power of two for stylegan
    select: SelectOptions = field(default_factory=SelectOptions)
    progress: bool = True


@dataclass
class ExportReport:
    out: Path
    counts: dict[str, int]  # faces per split
    dropped: dict[str, int]
    filtered: bool  # the filter's keep decided which faces
    labels: int  # vocabulary size
    unchanged: bool = False  # the same export was already there


def export_dataset(workspace: str | Path, options: ExportOptions) -> ExportReport:
    """Select, encode and write the dataset; a no-op when the same export is already at `out`."""
    ws = Workspace.open(workspace)
    if options.format not in FORMATS:
        raise InvalidArgument(f"--format {options.format!r}: choose one of {', '.join(FORMATS)}")
    if options.resolution < 4 or (
        options.format == "stylegan" and options.resolution & (options.resolution - 1)
    ):
        raise InvalidArgument(
            f"--resolution {options.resolution}: stylegan needs a power of two (64, 128, 256 …)"
        )
    out = Path(options.out or ws.export / options.format).expanduser().resolve()
    selection = select_samples(ws, options.select)
    if not selection.samples:
        raise InvalidArgument(f"nothing to export from {ws.root}: {selection.dropped or 'no face crops'}")
    vocabulary = read_vocabulary(ws).labels if (ws.root / VOCABULARY_FILE).is_file() else []
    fingerprint = _fingerprint(options, selection, vocabulary)
    previous = _read_record(out)
    counts = _split_counts(selection)
    if previous is not None and previous.get("fingerprint") == fingerprint:
        return ExportReport(
            out, counts, selection.dropped, selection.filtered, len(vocabulary), unchanged=True
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    tmp.mkdir()
    try:
        with StageProgress(
            "export", total=len(selection.samples), unit="faces", enabled=options.progress
        ) as bar:
            encoded = _encoded(ws, selection, options.resolution, bar)
            counts = WRITERS[options.format](tmp, encoded, vocabulary)
        (tmp / "README.md").write_text(
            dataset_card(options, selection, vocabulary, counts, ws), encoding="utf-8"
        )
        record = {
            "format": options.format,
            "resolution": options.resolution,
            "select": asdict(options.select),
            "counts": counts,
            "dropped": selection.dropped,
            "labels": vocabulary,
            "fingerprint": fingerprint,
            "created_at": now_utc().isoformat(),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _land(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportReport(out, counts, selection.dropped, selection.filtered, len(vocabulary))


def _split_counts(selection: Selection) -> dict[str, int]:
    counts = {"train": 0, "validation": 0}
    for sample in selection.samples:
        counts[sample.split] += 1
    return counts


def _fingerprint(options: ExportOptions, selection: Selection, vocabulary: list[str]) -> str:
    """What the export holds: the options, the faces, their labels and the vocabulary."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps([options.format, options.resolution, asdict(options.select), vocabulary]).encode()
    )
    for sample in selection.samples:
        digest.update(json.dumps([sample.face_id, sample.split, sample.labels, sample.filter_score]).encode())
    return digest.hexdigest()


def _read_record(out: Path) -> dict | None:
    try:
        return json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _land(tmp: Path, out: Path) -> None:
    """Put the finished export at `out`; an older export there is moved aside first, then removed."""
    old = None
    if out.exists():
        if not (out / RECORD).is_file() and any(out.iterdir()):
            raise InvalidArgument(f"{out} exists and is not a curate export; choose another --out")
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:6]}.old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _encoded(ws: Workspace, selection: Selection, resolution: int, bar: StageProgress) -> Iterator[Encoded]:
    """The samples in order with their crops as RGB PNGs of side `resolution` (decoded on threads)."""

    def encode(sample) -> Encoded:
        from PIL import Image

        try:
            with Image.open(ws.root / sample.crop) as image:
                flat = flat_rgb(image)  # transparency on white, as the tagger sees it
        except (OSError, ValueError) as exc:  # nothing is written: the export is still a temporary folder
            raise CurateError(
                f"the crop of {sample.face_id} ({sample.crop}) does not open: {exc}; "
                "run `curate crop --force` for its image, or leave it out with the filter"
            ) from None
        if flat.size != (resolution, resolution):
            flat = flat.resize((resolution, resolution), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        flat.save(buffer, format="PNG", compress_level=6)
        return sample, buffer.getvalue()

    workers = max(1, cpu_count())
    window: deque = deque()  # a bounded run of images ahead: Executor.map would encode them all at once
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sample in selection.samples:
            window.append(pool.submit(encode, sample))
            if len(window) >= 4 * workers:
                bar.advance(1)
                yield window.popleft().result()
        while window:
            bar.advance(1)
            yield window.popleft().result()
