"""`curate detect-train`: a Faster R-CNN trained in a workspace on COCO boxes or the cascade's pseudo-labels.

Without annotations the training set is the crop manifest's cascade boxes: an image is used when every
box the cascade found in it scores at least `min_score`, so a doubtful box never becomes background.
The labels used are written as COCO beside the checkpoints, so a run can be inspected and repeated.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc

from curate.errors import InvalidArgument
from curate.manifest import CROP, FAILED, STATUS, read_stage
from curate.shard import held_out
from curate.workspace import Workspace
from detect.faces.boxes import Box
from detect.faces.coco import CocoImage, load_coco, write_coco

PSEUDO_LABELS = "pseudo-labels.json"
DEFAULT_EPOCHS = 12  # mmdet's 1x schedule
_FACE_COLUMNS = ["image_id", STATUS, "detector", "score", "face_x0", "face_y0", "face_x1", "face_y1"]
_IMAGE_COLUMNS = ["source_path", "image_width", "image_height"]


@dataclass
class DetectTrainOptions:
    """What `curate detect-train` trains on, where it writes, and the schedule."""

    annotations: Path | None = None  # COCO file; None: the cascade's confident boxes from the crop manifest
    images_root: Path | None = None  # what the COCO file names are relative to (default: its folder)
    category: str | None = None  # keep only this COCO category's boxes
    min_score: float = 2.0  # pseudo-labels: the cascade level weight every box of an image must reach
    out: Path | None = None  # default: <workspace>/models/frcnn
    init: str = "pretrained"  # "pretrained" (hysts' model), "scratch", or a checkpoint path
    steps: int | None = None  # total steps; None: DEFAULT_EPOCHS passes over the training images
    batch_size: int = 2
    lr: float | None = None  # default: mmdet's 0.02 per 16 images
    device: str = "auto"
    val_fraction: float = 0.1  # held out (by a stable hash of the image path) when there are ≥ 10 images
    checkpoint_every: int = 500
    min_size: int = 800
    max_size: int = 1333
    seed: int = 0
    force: bool = False  # start again, removing the folder's earlier checkpoints
    progress: bool = True


@dataclass
class DetectTrainReport:
    """What a detect-train call did."""

    out: Path
    labels: str  # "annotations" | "pseudo-labels"
    train_images: int
    val_images: int
    boxes: int  # boxes in the training images
    steps: int  # steps done in all
    resumed_from: int
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, AP@0.5 on held-out images)
    last: Path | None = None
    best: Path | None = None
    skipped_images: int = 0  # pseudo-labels: images left out because a box scored under min_score

    @property
    def up_to_date(self) -> bool:
        return self.resumed_from == self.steps

    @property
    def recent_loss(self) -> float | None:
        """Mean loss of the last 20 steps (of those with a finite loss)."""
        tail = [x for x in self.losses[-20:] if math.isfinite(x)]
        return sum(tail) / len(tail) if tail else None


def detect_train(workspace: str | Path, options: DetectTrainOptions | None = None) -> DetectTrainReport:
    """Train (or go on training) the workspace's Faster R-CNN face detector."""
    options = options or DetectTrainOptions()
    if not 0 <= options.val_fraction < 1:
        raise InvalidArgument(f"--val-fraction must be in [0, 1), got {options.val_fraction}")
    ws = Workspace.open(workspace)
    out = Path(options.out) if options.out is not None else ws.models / "frcnn"
    if options.annotations is not None:
        samples = load_coco(options.annotations, images_root=options.images_root, category=options.category)
        missing = [s.path for s in samples if not s.path.is_file()]
        if missing:
            listed = ", ".join(str(p) for p in missing[:5]) + (" …" if len(missing) > 5 else "")
            raise InvalidArgument(f"{len(missing)} annotated images are not there: {listed} (see --images)")
        labels, skipped = "annotations", 0
    else:
        samples, skipped = pseudo_labels(ws, options.min_score)
        labels = "pseudo-labels"
    if not any(s.boxes for s in samples):
        raise InvalidArgument("the training set has no face box")
    train, val = split(samples, options.val_fraction)
    steps = options.steps or max(1, math.ceil(DEFAULT_EPOCHS * len(train) / options.batch_size))
    if options.force:
        _clear_checkpoints(out)
    out.mkdir(parents=True, exist_ok=True)
    if labels == "pseudo-labels":
        write_coco(
            out / PSEUDO_LABELS,
            [(ws.relative(s.path), s.width, s.height, s.boxes) for s in samples],
            scores=True,
        )
    from detect.faces.detector_training import train_detector

    result = train_detector(
        train,
        out,
        init=options.init,
        steps=steps,
        batch_size=options.batch_size,
        lr=options.lr,
        device=options.device,
        checkpoint_every=options.checkpoint_every,
        min_size=options.min_size,
        max_size=options.max_size,
        val_samples=val or None,
        seed=options.seed,
        progress=options.progress,
    )
    return DetectTrainReport(
        out=out,
        labels=labels,
        train_images=len(train),
        val_images=len(val),
        boxes=sum(len(s.boxes) for s in train),
        steps=result.steps,
        resumed_from=result.resumed_from,
        losses=result.losses,
        validation=result.validation,
        last=result.last,
        best=result.best,
        skipped_images=skipped,
    )


def pseudo_labels(ws: Workspace, min_score: float) -> tuple[list[CocoImage], int]:
    """Images whose cascade boxes all score ≥ `min_score`, with those boxes; and how many were left out."""
    table = read_stage(ws, CROP, columns=[*_FACE_COLUMNS, *_IMAGE_COLUMNS])
    table = table.filter(pc.and_(pc.equal(table["detector"], "cascade"), pc.not_equal(table[STATUS], FAILED)))
    if table.num_rows == 0:
        raise InvalidArgument(
            f"{ws.root} has no cascade crop rows to take pseudo-labels from: "
            "run `curate crop --detector cascade` first, or pass --annotations"
        )
    faces: dict[str, list[Box]] = defaultdict(list)
    sizes: dict[str, tuple[str, int, int]] = {}
    for row in table.to_pylist():
        if row["score"] is None:
            continue  # the image's no_face row: it has no box to learn from
        image_id = row["image_id"]
        faces[image_id].append(
            Box(row["face_x0"], row["face_y0"], row["face_x1"], row["face_y1"], score=row["score"])
        )
        sizes[image_id] = (row["source_path"], row["image_width"], row["image_height"])
    samples, skipped = [], 0
    for number, (image_id, boxes) in enumerate(sorted(faces.items()), start=1):
        if min(b.score for b in boxes) < min_score:
            skipped += 1
            continue
        path, width, height = sizes[image_id]
        samples.append(CocoImage(number, ws.root / path, width, height, boxes))
    if not samples:
        raise InvalidArgument(
            f"no image in {ws.root} has cascade boxes all scoring ≥ {min_score} "
            f"({skipped} have faces): lower --min-score"
        )
    return samples, skipped


def split(samples: list[CocoImage], val_fraction: float) -> tuple[list[CocoImage], list[CocoImage]]:
    """(train, validation) by a stable hash of each image's path; no validation under 10 images."""
    if val_fraction <= 0 or len(samples) < 10:
        return list(samples), []
    held = [held_out(s.path.name, val_fraction) for s in samples]
    train = [s for s, h in zip(samples, held, strict=True) if not h]
    val = [s for s, h in zip(samples, held, strict=True) if h]
    return (train, val) if train and val else (list(samples), [])


def _clear_checkpoints(out: Path) -> None:
    """Remove a folder's earlier checkpoints so a forced run cannot leave a stale best.pt behind."""
    if out.is_dir():
        for path in out.glob("*.pt"):
            path.unlink()
