"""`curate crop`: find the faces in every original, cut them square with margin, one manifest row per face.

Images whose rows exist are skipped (resume); `--force` redoes them and the newest rows of an image
replace all of its older ones. A file that does not decode gets a `failed` row and the stage goes on.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from curate import registry
from curate.errors import InvalidArgument
from curate.images import ImageCheckError
from curate.manifest import CRAWL, CROP, FAILED, OK, SKIPPED, STATUS, PartWriter, now_utc, read_stage
from curate.processes import cpu_count, exit_with, limit_malloc_arenas, without_main_module, worker_context
from curate.progress import StageProgress
from curate.shard import Shard
from curate.workspace import Workspace, land
from detect.faces.boxes import Box
from detect.faces.cascade import CascadeSettings
from detect.faces.decode import Decoded, decode
from detect.faces.detector import Detector
from detect.faces.geometry import CropSettings, crop_box, cut, resize

log = logging.getLogger(__name__)

DETECTORS = ("cascade", "frcnn")
# Below this many images the pool's start-up (≈1 s) costs more than it saves.
_MIN_IMAGES_FOR_PROCESSES = 16


@dataclass(frozen=True)
class DetectorSpec:
    """Which detector to build and how; picklable, so worker processes build their own copy."""

    kind: str = "cascade"
    model: Path | None = None  # a local file; None takes the registry's pinned model
    cascade: CascadeSettings = field(default_factory=CascadeSettings)
    score_threshold: float = 0.5  # Faster R-CNN only: the cascade's boxes all passed every stage
    nms_threshold: float = 0.5
    min_size: int | None = None  # Faster R-CNN input, shorter/longer side; None: as the model was trained
    max_size: int | None = None
    device: str = "auto"
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.kind not in DETECTORS:
            raise InvalidArgument(f"--detector must be one of {', '.join(DETECTORS)}, got {self.kind!r}")
        if not 0 <= self.score_threshold <= 1 or not 0 < self.nms_threshold <= 1:
            raise InvalidArgument("--score-threshold must be in [0, 1] and --nms in (0, 1]")
        if self.batch_size < 1:
            raise InvalidArgument("--batch-size must be at least 1")

    def resolved(self) -> DetectorSpec:
        """The same spec with the model file located (cache or download), so errors come before work."""
        artifact = registry.CASCADE if self.kind == "cascade" else registry.ANIME_FACE_FRCNN
        return replace(self, model=registry.resolve(artifact, self.model))

    def build(self) -> Detector:
        if self.kind == "cascade":
            from detect.faces.cascade import CascadeDetector

            return CascadeDetector(self.model or registry.resolve(registry.CASCADE), self.cascade)
        from detect.faces.frcnn import FasterRCNNDetector

        return FasterRCNNDetector(
            model_path=self.model,
            device=self.device,
            batch_size=self.batch_size,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            min_size=self.min_size,
            max_size=self.max_size,
        )


@dataclass
class CropOptions:
    detector: DetectorSpec = field(default_factory=DetectorSpec)
    crop: CropSettings = field(default_factory=CropSettings)
    workers: int = 0  # processes for the cascade; 0 = one per CPU
    shard: Shard = field(default_factory=Shard)
    force: bool = False
    retry_failed: bool = False
    progress: bool = True
    rows_per_part: int = 1000


@dataclass
class CropReport:
    """What a crop run did."""

    images: int = 0  # originals processed this run
    already_done: int = 0  # skipped because an earlier run did them
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)  # (status, error) of rows
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def faces(self) -> int:
        return self.outcomes[(OK, None)]


@dataclass(frozen=True)
class Job:
    image_id: str
    path: str  # relative to the workspace


def crop_images(workspace: str | Path, options: CropOptions | None = None) -> CropReport:
    """Run the crop stage over every stored original of the crawl/ingest manifest not yet cropped."""
    options = options or CropOptions()
    ws = Workspace.open(workspace)
    ws.sweep_temp()
    jobs, already_done = plan_jobs(ws, options)
    report = CropReport(already_done=already_done)
    if not jobs:
        return report
    spec = options.detector.resolved()  # a missing model fails here, before any work
    params = {
        "detector": spec.kind,
        **_detector_params(spec),
        **asdict(options.crop),
        "shard": str(options.shard),
    }
    cropper = None
    if spec.kind == "frcnn":  # one model, loaded here: its parts record the input size it really runs at
        cropper = Cropper(ws, spec, options.crop)
        params.update(cropper.detector.params())
    writer = PartWriter(ws, CROP, params, rows_per_part=options.rows_per_part)
    workers = options.workers or cpu_count()
    if cropper is not None:
        results = _run_batched(cropper, jobs)
    elif workers > 1 and len(jobs) >= _MIN_IMAGES_FOR_PROCESSES:
        results = _Pooled(ws, spec, options.crop, jobs, min(workers, len(jobs)))
    else:
        results = _run_here(ws, spec, options.crop, jobs)
    completed = False
    with StageProgress("crop", total=len(jobs), unit="images", enabled=options.progress) as progress:
        try:
            for rows in results:
                writer.extend(rows)
                report.images += 1
                report.outcomes.update((row[STATUS], row["error"]) for row in rows)
                progress.advance(1)
            completed = True
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            if hasattr(results, "close"):
                results.close()  # stops workers (also on Ctrl-C) before the last part is written
            writer.flush(complete=completed and options.shard.count == 1)
            report.seconds = progress.elapsed
    return report


def _detector_params(spec: DetectorSpec) -> dict[str, Any]:
    model = {"model": spec.model.name if spec.model else None}
    if spec.kind == "cascade":
        return {**model, **{f"cascade_{k}": v for k, v in asdict(spec.cascade).items()}}
    keys = ("score_threshold", "nms_threshold", "min_size", "max_size")
    return {**model, **{k: getattr(spec, k) for k in keys}}


def plan_jobs(ws: Workspace, options: CropOptions) -> tuple[list[Job], int]:
    """Stored originals in this shard not cropped yet, and how many were skipped as done."""
    crawl = read_stage(ws, CRAWL, columns=["image_id", "path", STATUS])
    if crawl.num_rows == 0:
        raise InvalidArgument(
            f"{ws.root} has no crawl or ingest manifest yet: run `curate crawl` or `curate ingest`"
        )
    stored = crawl.filter(pc.and_(pc.equal(crawl[STATUS], OK), pc.is_valid(crawl["path"])))
    seen: set[str] = set()
    wanted: list[Job] = []
    for image_id, path in zip(stored["image_id"].to_pylist(), stored["path"].to_pylist(), strict=True):
        if image_id in seen or image_id not in options.shard:
            continue
        seen.add(image_id)
        wanted.append(Job(image_id, path))
    done = set() if options.force else _done_images(ws, redo_failed=options.retry_failed)
    jobs = [job for job in wanted if job.image_id not in done]
    return jobs, len(wanted) - len(jobs)


def _done_images(ws: Workspace, *, redo_failed: bool) -> set[str]:
    table = read_stage(ws, CROP, columns=["image_id", STATUS])
    if redo_failed:
        table = table.filter(pc.not_equal(table[STATUS], FAILED))
    return set(pc.unique(table["image_id"]).to_pylist())


class Cropper:
    """Per-image work: decode, detect, cut, write PNGs, build rows. One per process."""

    def __init__(
        self, ws: Workspace, spec: DetectorSpec, settings: CropSettings, *, detector: Detector | None = None
    ):
        self.ws, self.spec, self.settings = ws, spec, settings
        self.detector = detector if detector is not None else spec.build()
        self._scratch: Path | None = None

    def process(self, job: Job) -> list[dict[str, Any]]:
        """Every row for one original: its faces, or one no_face / failed row."""
        decoded = self.prepare(job)
        if not isinstance(decoded, Decoded):
            return decoded
        boxes = self.detector.detect([decoded.rgb], [self.settings.min_face * decoded.scale])[0]
        return self.finish(job, decoded, boxes)

    def prepare(self, job: Job) -> Decoded | list[dict[str, Any]]:
        """The decoded original, as large as the detector needs; or the failed row."""
        min_face = self.settings.min_face
        try:
            return decode(
                self.ws.root / job.path, scale_for=lambda w, h: self.detector.decode_scale(w, h, min_face)
            )
        except ImageCheckError as err:
            return [self._image_row(job, None, FAILED, err.code, err.message)]
        except FileNotFoundError:
            return [self._image_row(job, None, FAILED, "missing_file", f"{job.path} is not in the workspace")]
        except OSError as err:
            return [self._image_row(job, None, FAILED, "read_error", f"{job.path}: {err}")]

    def finish(self, job: Job, decoded: Decoded, boxes: list[Box]) -> list[dict[str, Any]]:
        """Crop each box (given in the decoded copy's pixels) and return the rows."""
        if not boxes:
            return [self._image_row(job, decoded, SKIPPED, "no_face", "no face found")]
        faces = sorted((box.scaled(1 / decoded.scale) for box in boxes), key=lambda b: -b.score)
        full: Decoded | None = decoded if decoded.scale == 1.0 else None
        rows = []
        for index, face in enumerate(faces):
            row = self._face_row(job, decoded, index, face)
            rows.append(row)
            if face.side < self.settings.min_face:
                row.update(status=SKIPPED, error="too_small", message=f"face {face.side:.0f} px < --min-face")
                continue
            box = crop_box(face, self.settings)
            source = decoded
            if (box[2] - box[0]) * decoded.scale < self.settings.size and full is None:
                full = decode(self.ws.root / job.path)  # the reduced copy is too coarse for this crop
            if (box[2] - box[0]) * decoded.scale < self.settings.size and full is not None:
                source = full
            pixels, padded = cut(source.rgb, _scaled_box(box, source.scale), self.settings.pad)
            path = self.ws.crops / job.image_id[:2] / f"{row['face_id']}.png"
            self._write_png(resize(pixels, self.settings.size), path)
            row.update(
                crop_x0=box[0], crop_y0=box[1], crop_x1=box[2], crop_y1=box[3], padded=padded,
                path=self.ws.relative(path), size=self.settings.size,
            )  # fmt: skip
        return rows

    def _write_png(self, rgb: Any, dest: Path) -> None:
        import cv2

        ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {dest.name}")
        if self._scratch is None:
            self._scratch = self.ws.temp_dir()
        tmp = self._scratch / dest.name
        tmp.write_bytes(data.tobytes())
        land(tmp, dest)

    def _image_row(
        self, job: Job, decoded: Decoded | None, status: str, error: str | None, message: str | None
    ) -> dict[str, Any]:
        row = {
            "face_id": job.image_id,
            "image_id": job.image_id,
            "status": status,
            "error": error,
            "message": message,
            "detector": self.spec.kind,
            "source_path": job.path,
            "cropped_at": now_utc(),
        }
        if decoded is not None:
            row.update(
                image_width=decoded.width,
                image_height=decoded.height,
                frames=decoded.frames,
                mode=decoded.mode,
                is_monochrome=decoded.is_monochrome,
            )
        return row

    def _face_row(self, job: Job, decoded: Decoded, index: int, face: Box) -> dict[str, Any]:
        row = self._image_row(job, decoded, OK, None, None)
        row.update(
            face_id=f"{job.image_id}-{index}", face_index=index, score=face.score,
            face_x0=face.x0, face_y0=face.y0, face_x1=face.x1, face_y1=face.y1,
        )  # fmt: skip
        return row


def _scaled_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    if scale == 1.0:
        return box
    x0, y0 = round(box[0] * scale), round(box[1] * scale)
    side = max(1, round((box[2] - box[0]) * scale))
    return x0, y0, x0 + side, y0 + side


# --- runners: each yields one list of rows per image, in completion order --------------------------------


def _run_here(
    ws: Workspace, spec: DetectorSpec, settings: CropSettings, jobs: list[Job]
) -> Iterator[list[dict]]:
    cropper = Cropper(ws, spec, settings)
    for job in jobs:
        yield cropper.process(job)


_worker: Cropper | None = None


def _init_worker(root: str, spec: DetectorSpec, settings: CropSettings, parent: int) -> None:
    import signal

    import cv2

    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    exit_with(parent)
    limit_malloc_arenas()
    cv2.setNumThreads(1)  # one image per core beats OpenCV splitting each image over every core
    _worker = Cropper(Workspace(Path(root)), spec, settings)


def _work(job: Job) -> list[dict[str, Any]]:
    assert _worker is not None
    return _worker.process(job)


class _Pooled:
    """Images spread over worker processes, a bounded window of them in flight."""

    def __init__(
        self, ws: Workspace, spec: DetectorSpec, settings: CropSettings, jobs: list[Job], workers: int
    ):
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=worker_context(),
            initializer=_init_worker,
            initargs=(str(ws.root), spec, settings, os.getpid()),
        )
        self.jobs = iter(jobs)
        self.window = 4 * workers

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        pending: deque[Future] = deque()
        for job in self.jobs:
            with without_main_module():  # a submit may start a worker process
                pending.append(self.pool.submit(_work, job))
            if len(pending) >= self.window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _run_batched(cropper: Cropper, jobs: list[Job]) -> Iterator[list[dict]]:
    """One model in this process sees batches; threads decode ahead of it and crop behind it."""
    settings, batch_size = cropper.settings, cropper.spec.batch_size
    with ThreadPoolExecutor(max_workers=min(8, cpu_count() + 1), thread_name_prefix="crop-io") as io:
        decoding = deque(io.submit(cropper.prepare, job) for job in jobs[: 2 * batch_size])
        upcoming = iter(jobs[2 * batch_size :])
        queue = deque(jobs)
        finishing: deque[Future] = deque()
        while decoding:
            batch: list[tuple[Job, Decoded]] = []
            while decoding and len(batch) < batch_size:
                job = queue.popleft()
                result = decoding.popleft().result()
                nxt = next(upcoming, None)
                if nxt is not None:
                    decoding.append(io.submit(cropper.prepare, nxt))
                if isinstance(result, Decoded):
                    batch.append((job, result))
                else:
                    yield result
            if batch:
                mins = [settings.min_face * d.scale for _, d in batch]
                found = cropper.detector.detect([d.rgb for _, d in batch], mins)
                finishing.extend(
                    io.submit(cropper.finish, j, d, b) for (j, d), b in zip(batch, found, strict=True)
                )
            while finishing and (finishing[0].done() or len(finishing) > 2 * batch_size):
                yield finishing.popleft().result()
        while finishing:
            yield finishing.popleft().result()
