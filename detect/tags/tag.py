"""`curate tag`: every face crop through the tagger, with the post's own booru tags beside its labels.

Crops are decoded and preprocessed in DataLoader worker processes while the model runs on the batch
before; rows are written as parts like every stage, so a killed run resumes with the faces not done.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.imagefiles import image_batches
from curate.manifest import (
    BOORU_CATEGORIES,
    CRAWL,
    FAILED,
    OK,
    STATUS,
    TAG,
    FaceCrop,
    PartWriter,
    face_crops,
    now_utc,
    read_stage,
)
from curate.progress import StageProgress
from curate.shard import Shard
from curate.tagnames import merge_labels
from curate.workspace import Workspace
from detect.tags.tagger import Prediction, Thresholds, read_prediction

log = logging.getLogger(__name__)


@dataclass
class TagOptions:
    model: str | Path | None = None  # hub id or WD-format folder; None: the default WD tagger
    thresholds: Thresholds = field(default_factory=Thresholds)
    device: str = "auto"
    batch_size: int = 8
    workers: int | None = None  # decoding processes; None: half the CPUs (the model wants the rest)
    shard: Shard = field(default_factory=Shard)
    force: bool = False
    retry_failed: bool = False
    progress: bool = True
    rows_per_part: int = 1000


@dataclass
class TagReport:
    faces: int = 0  # faces tagged this run (rows written)
    already_done: int = 0
    outcomes: Counter[tuple[str, str | None]] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)  # tagger labels given this run
    seconds: float = 0.0
    interrupted: bool = False


def tag_faces(workspace: str | Path, options: TagOptions | None = None) -> TagReport:
    """Run the tag stage over every face crop not yet tagged."""
    options = options or TagOptions()
    ws = Workspace.open(workspace)
    faces, already_done = plan_faces(ws, options)
    report = TagReport(already_done=already_done)
    if not faces:
        return report
    from detect.tags.tagger import Tagger

    tagger = Tagger(options.model, options.device)  # a missing model fails here, before any work
    booru = booru_tags(ws, {face.image_id for face in faces})
    params = {
        "model": tagger.name,
        "input_size": tagger.input_size,
        "device": tagger.device.type,
        "batch_size": options.batch_size,
        **asdict(options.thresholds),
        "shard": str(options.shard),
    }
    writer = PartWriter(ws, TAG, params, rows_per_part=options.rows_per_part)
    completed = False
    with StageProgress("tag", total=len(faces), unit="faces", enabled=options.progress) as progress:
        try:
            batches = image_batches(
                [face.path for face in faces],
                tagger.preprocess,
                batch_size=options.batch_size,
                workers=options.workers,
                root=ws.root,
            )
            for indices, batch, errors in batches:
                probs = tagger.predict(batch) if len(batch) else np.empty((0, len(tagger.tags.names)))
                rows = [
                    _tagged_row(
                        faces[i], tagger.name, read_prediction(p, tagger.tags, options.thresholds), booru
                    )
                    for i, p in zip(indices, probs, strict=True)
                ]
                rows += [_failed_row(faces[i], tagger.name, code, message) for i, code, message in errors]
                writer.extend(rows)
                for row in rows:
                    report.outcomes[(row[STATUS], row["error"])] += 1
                    report.labels.update(row.get("tags_general") or ())
                report.faces += len(rows)
                progress.advance(len(rows))
            completed = True
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            writer.flush(complete=completed and options.shard.count == 1)
            report.seconds = progress.elapsed
    return report


def plan_faces(ws: Workspace, options: TagOptions) -> tuple[list[FaceCrop], int]:
    """Cropped faces in this shard not tagged yet, and how many were skipped as done."""
    wanted = [face for face in face_crops(ws) if face.face_id in options.shard]
    done: set[str] = set()
    if not options.force:
        tagged = read_stage(ws, TAG, columns=[STATUS])
        if options.retry_failed:
            tagged = tagged.filter(pc.not_equal(tagged[STATUS], FAILED))
        done = set(tagged["face_id"].to_pylist())
    faces = [face for face in wanted if face.face_id not in done]
    return faces, len(wanted) - len(faces)


def booru_tags(ws: Workspace, image_ids: set[str]) -> dict[str, dict[str, list[str]]]:
    """For each image, the tags by category of every post that stored it (in first-seen order)."""
    columns = [f"tags_{name}" for name in BOORU_CATEGORIES]
    crawl = read_stage(ws, CRAWL, columns=["image_id", STATUS, *columns])
    crawl = crawl.filter(pc.equal(crawl[STATUS], OK))
    found: dict[str, dict[str, dict[str, None]]] = defaultdict(lambda: defaultdict(dict))
    for row in crawl.to_pylist():
        if row["image_id"] in image_ids:
            for name in BOORU_CATEGORIES:
                found[row["image_id"]][name].update(dict.fromkeys(row[f"tags_{name}"] or ()))
    return {image: {name: list(tags) for name, tags in groups.items()} for image, groups in found.items()}


def _tagged_row(
    face: FaceCrop, model: str, prediction: Prediction, booru: dict[str, dict[str, list[str]]]
) -> dict[str, Any]:
    posts = booru.get(face.image_id, {})
    labels, sources = merge_labels(
        prediction.general + prediction.character,
        posts.get("general", []) + posts.get("character", []),
    )
    return {
        **_base_row(face, model, OK),
        "rating": prediction.rating,
        "rating_score": prediction.rating_score,
        "tags_general": prediction.general,
        "tags_character": prediction.character,
        "scored_tags": [name for name, _ in prediction.scored],
        "scores": [score for _, score in prediction.scored],
        **{f"booru_{name}": posts.get(name, []) for name in BOORU_CATEGORIES},
        "labels": labels,
        "label_sources": sources,
    }


def _failed_row(face: FaceCrop, model: str, code: str, message: str) -> dict[str, Any]:
    return {**_base_row(face, model, FAILED), "error": code, "message": message}


def _base_row(face: FaceCrop, model: str, status: str) -> dict[str, Any]:
    return {
        "face_id": face.face_id,
        "image_id": face.image_id,
        STATUS: status,
        "error": None,
        "message": None,
        "model": model,
        "tagged_at": now_utc(),
    }
