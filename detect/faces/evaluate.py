"""Detector evaluation against COCO ground truth: precision, recall and F1 at a score cut, and AP.

Matching follows COCO's rules, per image and greedy by descending detection score: a detection takes the
still-unmatched ground-truth face it overlaps most, if that IoU is ≥ `iou_threshold` (a true positive);
a face is matched at most once, so a second detection on it is a false positive. A detection that matches
no face but covers an ignore region (a COCO `iscrowd` region, or a face below `min_face`) is ignored:
neither a true nor a false positive. Coverage of an ignore region is measured as COCO measures crowd
overlap, by intersection over the *detection's* area (IoA ≥ `iou_threshold`), so any box lying mostly
inside a crowd of faces is ignored however small it is. Unmatched detections below `min_face` are ignored
too (COCO's area-range rule): the crop stage drops them, so they never reach the dataset.

Conventions for empty cases (so a report never divides by zero):
- precision = TP / (TP + FP), 0.0 when nothing was detected (as scikit-learn does, and as COCO's curve
  reads at recalls never reached): a detector that finds nothing is not "perfectly precise".
- recall = TP / faces and AP are NaN when the ground truth has no faces: undefined, not 0 (COCO reports
  -1 for a category without ground truth). F1 is NaN whenever recall is, 0.0 when precision + recall is 0.
- AP is 0.0 when there are faces but no detections.
`as_dict` writes NaN as None so that the result is valid JSON; `format_report` prints it as "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument
from curate.images import ImageCheckError
from curate.progress import StageProgress
from detect.faces.boxes import Box, iou
from detect.faces.coco import CocoImage, load_coco
from detect.faces.decode import Decoded, decode
from detect.faces.detector import Detector

TP, FP, IGNORED = "tp", "fp", "ignored"
_MISSING_SHOWN = 5  # missing files named in the error; the rest are only counted


@dataclass(frozen=True)
class ImageResult:
    """One image's outcome at the score threshold, and every box the detector returned for it."""

    path: Path
    faces: int  # ground-truth faces that count (not ignore regions)
    ignore_regions: int  # `iscrowd` regions plus faces below min_face
    detections: int  # boxes with score ≥ the threshold: true_positives + false_positives + ignored
    ignored: int
    true_positives: int
    false_positives: int
    false_negatives: int
    boxes: tuple[Box, ...] = ()  # all detections, any score, original pixels, highest score first

    def as_dict(self) -> dict[str, Any]:
        """The counts, JSON-ready (boxes left out)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "boxes"}
        return {**row, "path": str(self.path)}


@dataclass
class EvalReport:
    """How well a detector's boxes match the ground truth, over a whole annotation file."""

    images: int
    faces: int  # ground-truth faces that count
    ignore_regions: int
    detections: int  # boxes with score ≥ score_threshold: true_positives + false_positives + ignored
    ignored: int  # of those, boxes on ignore regions or unmatched below min_face
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float
    recall: float
    f1: float
    ap50: float  # AP at `iou_threshold` over all detections, whatever their score (AP@0.5 by default)
    iou_threshold: float
    score_threshold: float | None  # None: every box the detector returned counts
    min_face: float = 0.0
    per_image: list[ImageResult] = field(default_factory=list, repr=False)

    def as_dict(self, *, per_image: bool = False) -> dict[str, Any]:
        """The summary as JSON-ready values (NaN → None); `per_image` adds each image's counts."""
        out = {f.name: _json_number(getattr(self, f.name)) for f in fields(self) if f.name != "per_image"}
        if per_image:
            out["per_image"] = [result.as_dict() for result in self.per_image]
        return out


def evaluate(
    ground_truth: Sequence[CocoImage],
    detections: Sequence[Sequence[Box]],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float | None = 0.5,
    min_face: float = 0.0,
) -> EvalReport:
    """Score `detections[i]` (boxes in image i's original pixels) against `ground_truth[i]`.

    Precision, recall and F1 count the detections with score ≥ `score_threshold` (None: all of them).
    AP ranks every detection of every image by score, thresholded or not, and is the area under the
    precision-recall curve under its precision envelope, over all recall points: the all-point
    interpolation of VOC2010+ (COCO samples the same envelope at 101 recall points instead, which can
    differ slightly). Detections with equal scores form one point of the curve, so ties do not make AP
    depend on image order. With `min_face` > 0, faces whose shorter side is below it become ignore
    regions, so a detector told to skip small faces is not penalised for doing so.
    """
    _check_settings(iou_threshold, score_threshold, min_face)
    if len(ground_truth) != len(detections):
        raise InvalidArgument(
            f"{len(ground_truth)} ground-truth images but detections for {len(detections)}: they must pair up"
        )
    cut = -math.inf if score_threshold is None else score_threshold
    ranked: list[tuple[float, bool]] = []  # (score, true positive) of every detection not ignored
    per_image: list[ImageResult] = []
    for image, found in zip(ground_truth, detections, strict=True):
        faces, regions, outcomes = _match_image(image, found, iou_threshold, min_face)
        ranked.extend((box.score, outcome == TP) for box, outcome in outcomes if outcome != IGNORED)
        kept = [outcome for box, outcome in outcomes if box.score >= cut]
        tp, fp = kept.count(TP), kept.count(FP)
        per_image.append(
            ImageResult(
                path=image.path,
                faces=len(faces),
                ignore_regions=len(regions),
                detections=len(kept),
                ignored=kept.count(IGNORED),
                true_positives=tp,
                false_positives=fp,
                false_negatives=len(faces) - tp,
                boxes=tuple(box for box, _ in outcomes),
            )
        )
    faces = sum(r.faces for r in per_image)
    tp = sum(r.true_positives for r in per_image)
    fp = sum(r.false_positives for r in per_image)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / faces if faces else math.nan
    if math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EvalReport(
        images=len(per_image),
        faces=faces,
        ignore_regions=sum(r.ignore_regions for r in per_image),
        detections=sum(r.detections for r in per_image),
        ignored=sum(r.ignored for r in per_image),
        true_positives=tp,
        false_positives=fp,
        false_negatives=faces - tp,
        precision=precision,
        recall=recall,
        f1=f1,
        ap50=average_precision(ranked, faces),
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        min_face=min_face,
        per_image=per_image,
    )


def average_precision(ranked: Sequence[tuple[float, bool]], positives: int) -> float:
    """All-point-interpolated AP of `(score, is_true_positive)` pairs against `positives` faces.

    NaN when there are no positives (recall is undefined), 0.0 when there are no detections.
    """
    if positives == 0:
        return math.nan
    if not ranked:
        return 0.0
    scores = np.array([score for score, _ in ranked], dtype=np.float64)
    hits = np.array([hit for _, hit in ranked], dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    # A threshold cannot separate tied scores: keep only the last point of each run of equal scores.
    last = np.append(scores[1:] != scores[:-1], True)
    tp, fp = tp[last], fp[last]
    recall = tp / positives
    precision = tp / (tp + fp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    return float(np.sum(np.diff(recall, prepend=0.0) * envelope))


def evaluate_detector(
    annotations: str | Path,
    detector: Detector,
    *,
    images_root: str | Path | None = None,
    category: str | None = None,
    min_face: float = 0.0,
    batch_size: int = 8,
    iou_threshold: float = 0.5,
    score_threshold: float | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run `detector` on every image of a COCO file, decoded as the crop stage decodes it, and score it.

    `score_threshold` None counts every box the detector returns in precision/recall/F1, i.e. its own
    cut-off (as in the crop stage); a number cuts there instead. AP always ranks every returned box, so
    a detector configured with a high internal cut-off truncates the curve and lowers AP: evaluate it
    with a low one (e.g. the cascade's `min_score` None) and pass `score_threshold` for the operating point.
    Every image must exist and decode: evaluating against broken ground truth means nothing.
    """
    _check_settings(iou_threshold, score_threshold, min_face)
    if batch_size < 1:
        raise InvalidArgument(f"batch size must be at least 1, got {batch_size}")
    images = load_coco(annotations, images_root=images_root, category=category)
    if not images:
        raise InvalidArgument(f"{annotations} lists no images: nothing to evaluate")
    missing = [image.path for image in images if not image.path.is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise InvalidArgument(
            f"{len(missing)} of {len(images)} images in {annotations} not found: {shown}{more} "
            "(file names are resolved against --images-root, by default the annotation file's folder)"
        )
    found: list[list[Box]] = []
    with StageProgress("detect-eval", total=len(images), unit="images", enabled=progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            decoded = [_decode(image, detector, min_face) for image in batch]
            boxes = detector.detect([d.rgb for d in decoded], [min_face * d.scale for d in decoded])
            if len(boxes) != len(batch):
                raise RuntimeError(f"detector {detector.name} returned {len(boxes)} results for {len(batch)}")
            # Detectors answer in the pixels of the copy they saw; ground truth is in the original's.
            found.extend([box.scaled(1 / d.scale) for box in b] for b, d in zip(boxes, decoded, strict=True))
            bar.advance(len(batch), sum(image.path.stat().st_size for image in batch))
    return evaluate(
        images, found, iou_threshold=iou_threshold, score_threshold=score_threshold, min_face=min_face
    )


def format_report(report: EvalReport, name: str) -> str:
    """A short table of the report for the terminal, headed by the detector's name."""
    cut = "all boxes" if report.score_threshold is None else f"score ≥ {report.score_threshold:g}"
    small = f", faces < {report.min_face:g} px ignored" if report.min_face > 0 else ""
    regions = f"  (+{report.ignore_regions:,} ignore regions)" if report.ignore_regions else ""
    ignored = f"  ({report.ignored:,} ignored)" if report.ignored else ""
    counts = f"{report.true_positives:,} / {report.false_positives:,} / {report.false_negatives:,}"
    rows = [
        ("images", f"{report.images:,}"),
        ("faces", f"{report.faces:,}{regions}"),
        ("detections", f"{report.detections:,}{ignored}"),
        ("TP / FP / FN", counts),
        ("precision", _fmt(report.precision)),
        ("recall", _fmt(report.recall)),
        ("F1", _fmt(report.f1)),
        (f"AP@{report.iou_threshold:g}", _fmt(report.ap50)),
    ]
    head = f"detector {name}: IoU ≥ {report.iou_threshold:g}, {cut}{small}"
    return "\n".join([head, *(f"  {label:<13}{value}" for label, value in rows)])


def _match_image(
    image: CocoImage, found: Sequence[Box], iou_threshold: float, min_face: float
) -> tuple[list[Box], list[Box], list[tuple[Box, str]]]:
    """The image's counted faces, its ignore regions, and each detection's outcome, best score first."""
    faces = [box for box in image.boxes if box.side >= min_face]
    regions = list(image.ignore) + [box for box in image.boxes if box.side < min_face]
    matched = [False] * len(faces)
    outcomes: list[tuple[Box, str]] = []
    for det in sorted(found, key=lambda b: -b.score):  # stable: equal scores keep the detector's order
        best, best_iou = -1, 0.0
        for index, face in enumerate(faces):
            overlap = 0.0 if matched[index] else iou(det, face)
            if overlap >= iou_threshold and overlap > best_iou:  # ties go to the first face, as in COCO
                best, best_iou = index, overlap
        if best >= 0:
            matched[best] = True
            outcomes.append((det, TP))
        elif det.side < min_face or any(_ioa(det, region) >= iou_threshold for region in regions):
            outcomes.append((det, IGNORED))
        else:
            outcomes.append((det, FP))
    return faces, regions, outcomes


def _ioa(det: Box, region: Box) -> float:
    """Intersection over the detection's area: COCO's overlap measure for crowd regions."""
    w = min(det.x1, region.x1) - max(det.x0, region.x0)
    h = min(det.y1, region.y1) - max(det.y0, region.y0)
    if w <= 0 or h <= 0 or det.area <= 0:
        return 0.0
    return w * h / det.area


def _decode(image: CocoImage, detector: Detector, min_face: float) -> Decoded:
    """The image as the detector wants it; broken or mis-sized ground truth is the user's to fix."""
    try:
        decoded = decode(image.path, scale_for=lambda w, h: detector.decode_scale(w, h, min_face))
    except ImageCheckError as err:
        raise InvalidArgument(f"{image.path} does not decode ({err.code}: {err.message})") from None
    except OSError as err:
        raise InvalidArgument(f"{image.path} cannot be read: {err}") from None
    size = (image.width, image.height)
    if None not in size and size != (decoded.width, decoded.height):
        # Boxes drawn on another size (often the stored pixels of an EXIF-rotated file) cannot line up.
        raise InvalidArgument(
            f"{image.path} is {decoded.width}x{decoded.height} as displayed but the annotations say "
            f"{image.width}x{image.height}"
        )
    return decoded


def _check_settings(iou_threshold: float, score_threshold: float | None, min_face: float) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise InvalidArgument(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    if score_threshold is not None and not math.isfinite(score_threshold):
        raise InvalidArgument(f"score threshold must be a finite number, got {score_threshold}")
    if not (math.isfinite(min_face) and min_face >= 0):
        raise InvalidArgument(f"min face must be >= 0 pixels, got {min_face}")


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
