"""Detector evaluation: hand-computed precision/recall/F1/AP on a tiny COCO file, and the end-to-end run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from curate.errors import InvalidArgument
from detect.faces.boxes import Box
from detect.faces.coco import CocoImage, load_coco
from detect.faces.evaluate import average_precision, evaluate, evaluate_detector, format_report

# Ground truth, all images 200x200 (xywh in the file, corners below):
#   one.jpg    A = (10,10)-(60,60), B = (100,100)-(160,160)
#   two.jpg    C = (0,0)-(40,40), crowd region R = (100,0)-(200,100)
#   three.jpg  no faces
#   four.jpg   D = (50,50)-(100,100)
# 4 faces count (R is an ignore region).
TINY_COCO = {
    "images": [
        {"id": 1, "file_name": "one.jpg", "width": 200, "height": 200},
        {"id": 2, "file_name": "two.jpg", "width": 200, "height": 200},
        {"id": 3, "file_name": "three.jpg", "width": 200, "height": 200},
        {"id": 4, "file_name": "four.jpg", "width": 200, "height": 200},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 60, 60], "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [100, 0, 100, 100], "iscrowd": 1},
        {"id": 5, "image_id": 4, "category_id": 1, "bbox": [50, 50, 50, 50], "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "face"}],
}

# Detections (corners, score) and what each one is:
TINY_DETECTIONS = [
    [
        # d2 comes first in the input: matching must still go by score, so d1 gets A and d2 is the duplicate.
        Box(12, 12, 62, 62, 0.8),  # d2: IoU with A = 48²/(2500+2500-48²) = 2304/2696 = 0.85, A taken → FP
        Box(10, 10, 60, 60, 0.9),  # d1: exactly A → TP
        Box(100, 100, 160, 160, 0.3),  # d3: exactly B → TP, but below the 0.5 score cut
    ],
    [
        Box(20, 20, 60, 60, 0.7),  # d4: on C with IoU 20²/(1600+1600-400) = 400/2800 = 0.14 < 0.5 → FP
        # d5: inside R. IoU with R = 1600/10000 = 0.16 would make it an FP; intersection over the
        # detection's area = 1600/1600 = 1 ≥ 0.5 → ignored
        Box(120, 20, 160, 60, 0.6),
    ],
    [Box(0, 0, 30, 30, 0.95)],  # d6: an image without faces → FP
    [
        Box(51, 51, 101, 101, 0.85),  # d7: IoU with D = 49²/(2·2500-49²) = 2401/2599 = 0.92 → TP
        Box(150, 150, 190, 190, 0.4),  # d8: nothing there → FP, below the score cut
    ],
]


@pytest.fixture
def tiny(tmp_path: Path) -> list[CocoImage]:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(TINY_COCO), encoding="utf-8")
    return load_coco(path)


def test_hand_computed_metrics_at_score_cut(tiny: list[CocoImage]):
    report = evaluate(tiny, TINY_DETECTIONS, iou_threshold=0.5, score_threshold=0.5)
    # Score ≥ 0.5: d6 FP, d1 TP, d7 TP, d2 FP, d4 FP, d5 ignored (d3 0.3 and d8 0.4 are cut).
    assert (report.images, report.faces, report.ignore_regions) == (4, 4, 1)
    assert (report.detections, report.ignored) == (6, 1)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (2, 3, 2)
    assert report.precision == pytest.approx(2 / 5)  # 2 TP / (2 TP + 3 FP)
    assert report.recall == pytest.approx(2 / 4)  # 2 TP / 4 faces (B and C missed at this cut)
    assert report.f1 == pytest.approx(4 / 9)  # 2·0.4·0.5 / (0.4 + 0.5) = 0.4 / 0.9
    # AP ranks every detection except the ignored d5, whatever its score (4 faces):
    #   score  det  outcome  TP FP  precision  recall
    #   0.95   d6   FP        0  1    0/1       0/4
    #   0.90   d1   TP        1  1    1/2       1/4
    #   0.85   d7   TP        2  1    2/3       2/4
    #   0.80   d2   FP        2  2    2/4       2/4
    #   0.70   d4   FP        2  3    2/5       2/4
    #   0.40   d8   FP        2  4    2/6       2/4
    #   0.30   d3   TP        3  4    3/7       3/4
    # Envelope (best precision at that recall or beyond): recall 1/4 → 2/3 (lifted from 1/2),
    # 2/4 → 2/3, 3/4 → 3/7; C is never found, so the curve stops at recall 3/4.
    # Area = (1/4 - 0)·2/3 + (2/4 - 1/4)·2/3 + (3/4 - 2/4)·3/7 = 1/6 + 1/6 + 3/28 = 37/84 ≈ 0.4405
    assert report.ap50 == pytest.approx(37 / 84)
    assert (report.iou_threshold, report.score_threshold) == (0.5, 0.5)

    two = report.per_image[1]
    assert two.path.name == "two.jpg"
    counts = (two.faces, two.ignore_regions, two.detections, two.ignored)
    assert counts == (1, 1, 2, 1)
    assert (two.true_positives, two.false_positives, two.false_negatives) == (0, 1, 1)
    assert [b.score for b in report.per_image[0].boxes] == [0.9, 0.8, 0.3]  # highest first, all scores


def test_hand_computed_metrics_without_score_cut(tiny: list[CocoImage]):
    report = evaluate(tiny, TINY_DETECTIONS, score_threshold=None)
    # All 8 count: TP d1 d3 d7, FP d2 d4 d6 d8, ignored d5; only C missed.
    assert (report.detections, report.ignored) == (8, 1)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (3, 4, 1)
    assert report.precision == pytest.approx(3 / 7)
    assert report.recall == pytest.approx(3 / 4)
    assert report.f1 == pytest.approx(6 / 11)  # 2·(3/7)(3/4) / (3/7 + 3/4) = (18/28) / (33/28)
    assert report.ap50 == pytest.approx(37 / 84)  # AP never depends on the cut


def test_stricter_iou_turns_loose_boxes_into_misses(tiny: list[CocoImage]):
    # At IoU 0.95, d7 (IoU 0.924 with D) no longer matches: it becomes an FP and D a miss.
    report = evaluate(tiny, TINY_DETECTIONS, iou_threshold=0.95, score_threshold=0.5)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (1, 4, 3)


def test_min_face_turns_small_faces_and_small_strays_into_ignores():
    image = CocoImage(1, Path("x.jpg"), 200, 200, boxes=[Box(0, 0, 20, 20), Box(50, 50, 100, 100)])
    found = [
        [
            Box(0, 0, 20, 20, 0.9),  # on the 20 px face, which is below min_face → ignored
            Box(150, 150, 170, 170, 0.8),  # 20 px stray: unmatched and below min_face → ignored
            Box(100, 0, 160, 60, 0.7),  # 60 px stray → FP
            Box(50, 50, 100, 100, 0.6),  # the 50 px face → TP
        ]
    ]
    report = evaluate([image], found, score_threshold=None, min_face=30)
    assert (report.faces, report.ignore_regions, report.detections, report.ignored) == (1, 1, 4, 2)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (1, 1, 0)
    assert (report.precision, report.recall) == (0.5, 1.0)
    assert report.f1 == pytest.approx(2 / 3)
    # Ranked without the ignored: 0.7 FP (P 0, R 0), 0.6 TP (P 1/2, R 1) → area 1 · 1/2.
    assert report.ap50 == pytest.approx(0.5)

    # Without min_face both faces count and the 20 px stray is an ordinary FP.
    plain = evaluate([image], found, score_threshold=None)
    assert (plain.faces, plain.true_positives, plain.false_positives, plain.false_negatives) == (2, 2, 2, 0)


def test_tied_scores_do_not_depend_on_image_order():
    face = CocoImage(1, Path("face.jpg"), 100, 100, boxes=[Box(10, 10, 50, 50)])
    empty = CocoImage(2, Path("empty.jpg"), 100, 100)
    hit, miss = [Box(10, 10, 50, 50, 0.5)], [Box(60, 60, 90, 90, 0.5)]
    # One point at score 0.5: 1 TP, 1 FP → precision 1/2 at recall 1 → AP 1/2, in either order
    # (taken one by one, TP first would give 1.0 and FP first 0.5).
    assert evaluate([face, empty], [hit, miss]).ap50 == pytest.approx(0.5)
    assert evaluate([empty, face], [miss, hit]).ap50 == pytest.approx(0.5)


def test_average_precision_bounds():
    assert average_precision([(0.9, True), (0.8, True), (0.1, False)], 2) == pytest.approx(1.0)
    assert average_precision([(0.9, True)], 4) == pytest.approx(0.25)
    assert average_precision([], 3) == 0.0
    assert math.isnan(average_precision([(0.9, False)], 0))


def test_no_faces_leaves_recall_undefined():
    report = evaluate([CocoImage(1, Path("x.jpg"), 10, 10)], [[Box(0, 0, 5, 5, 0.9)]])
    assert (report.faces, report.false_positives, report.precision) == (0, 1, 0.0)
    assert math.isnan(report.recall) and math.isnan(report.f1) and math.isnan(report.ap50)
    summary = report.as_dict()
    assert (summary["recall"], summary["f1"], summary["ap50"]) == (None, None, None)
    json.dumps(summary, allow_nan=False)  # valid JSON
    assert "n/a" in format_report(report, "stub")


def test_no_detections_scores_zero():
    image = CocoImage(1, Path("x.jpg"), 100, 100, boxes=[Box(0, 0, 50, 50), Box(50, 50, 99, 99)])
    report = evaluate([image], [[]])
    assert (report.detections, report.false_negatives) == (0, 2)
    assert (report.precision, report.recall, report.f1, report.ap50) == (0.0, 0.0, 0.0, 0.0)


def test_evaluate_rejects_bad_input(tiny: list[CocoImage]):
    with pytest.raises(InvalidArgument, match="4 ground-truth images but detections for 3"):
        evaluate(tiny, TINY_DETECTIONS[:3])
    with pytest.raises(InvalidArgument, match="IoU threshold"):
        evaluate(tiny, TINY_DETECTIONS, iou_threshold=0.0)
    with pytest.raises(InvalidArgument, match="score threshold"):
        evaluate(tiny, TINY_DETECTIONS, score_threshold=math.nan)
    with pytest.raises(InvalidArgument, match="min face"):
        evaluate(tiny, TINY_DETECTIONS, min_face=-1)


def test_format_report_and_as_dict(tiny: list[CocoImage]):
    report = evaluate(tiny, TINY_DETECTIONS)
    text = format_report(report, "cascade")
    assert text.splitlines()[0] == "detector cascade: IoU ≥ 0.5, score ≥ 0.5"
    for expected in ("images       4", "faces        4  (+1 ignore regions)", "(1 ignored)", "2 / 3 / 2"):
        assert expected in text
    assert "precision    0.400" in text and "recall       0.500" in text
    assert "F1           0.444" in text and "AP@0.5       0.440" in text
    summary = report.as_dict(per_image=True)
    assert summary["true_positives"] == 2 and summary["per_image"][2]["path"].endswith("three.jpg")
    assert "per_image" not in report.as_dict()
    json.dumps(summary, allow_nan=False)


# --- end to end on real fixture images ---------------------------------------------------------------

APP1, PUNDO3, PUNDO1 = "dbregion__code_app1.jpg", "pundo__imgs_3.jpg", "pundo__imgs_1.jpg"


class StubDetector:
    """Answers fixed boxes by the shape of the array it gets, in that array's pixels; records its calls."""

    name = "stub"

    def __init__(self, answers: dict[tuple[int, int], list[Box]], scale: float = 0.5):
        self.answers = answers
        self.scale = scale
        self.scale_calls: list[tuple[int, int, float]] = []
        self.calls: list[tuple[list[tuple[int, ...]], list[float] | None]] = []

    def decode_scale(self, width: int, height: int, min_face: float) -> float:
        self.scale_calls.append((width, height, min_face))
        return self.scale

    def detect(
        self, images: Sequence[np.ndarray], min_faces: Sequence[float] | None = None
    ) -> list[list[Box]]:
        self.calls.append(([image.shape for image in images], None if min_faces is None else list(min_faces)))
        return [list(self.answers.get(image.shape[:2], [])) for image in images]

    def params(self) -> dict[str, Any]:
        return {"detector": self.name}


def half_size_stub() -> StubDetector:
    # Boxes in the half-size arrays: app1 (1024x1448 → 512x724) face x246,y174,w277,h277 halved, plus a
    # low-scoring stray; pundo_3 (576x768 → 288x384) face x82,y192,w328,h328 halved; pundo_1 nothing.
    return StubDetector(
        {
            (724, 512): [Box(123, 87, 261.5, 225.5, 0.9), Box(0, 0, 50, 50, 0.2)],
            (384, 288): [Box(41, 96, 205, 260, 0.8)],
        }
    )


def write_annotations(
    path: Path, entries: list[tuple[str, int | None, int | None, list[list[float]]]]
) -> Path:
    doc: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "face"}]}
    for image_id, (name, width, height, boxes) in enumerate(entries, start=1):
        doc["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for bbox in boxes:
            doc["annotations"].append(
                {"id": len(doc["annotations"]) + 1, "image_id": image_id, "category_id": 1, "bbox": bbox}
            )
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def faces_dir(fixtures: Path) -> Path:
    return fixtures / "images" / "faces"


@pytest.fixture
def annotations(tmp_path: Path) -> Path:
    return write_annotations(
        tmp_path / "gt.json",
        [
            (APP1, 1024, 1448, [[246, 174, 277, 277]]),
            (PUNDO3, 576, 768, [[82, 192, 328, 328]]),
            (PUNDO1, 896, 1152, [[100, 100, 200, 200]]),  # a face the stub never finds
        ],
    )


def test_evaluate_detector_maps_boxes_back_to_original_pixels(annotations: Path, faces_dir: Path):
    stub = half_size_stub()
    # IoU 0.99 only passes if every half-size box is scaled back by exactly 2.
    report = evaluate_detector(
        annotations, stub, images_root=faces_dir, batch_size=2, iou_threshold=0.99, progress=False
    )
    assert stub.scale_calls == [(1024, 1448, 0.0), (576, 768, 0.0), (896, 1152, 0.0)]
    assert stub.calls == [([(724, 512, 3), (384, 288, 3)], [0.0, 0.0]), ([(576, 448, 3)], [0.0])]
    assert report.per_image[0].boxes == (Box(246, 174, 523, 451, 0.9), Box(0, 0, 100, 100, 0.2))
    assert report.per_image[1].boxes == (Box(82, 192, 410, 520, 0.8),)
    # score_threshold None: all 3 boxes count. TP app1 and pundo_3, FP the stray, FN pundo_1.
    assert (report.images, report.faces, report.detections) == (3, 3, 3)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (2, 1, 1)
    assert report.score_threshold is None
    assert report.precision == pytest.approx(2 / 3)
    assert report.recall == pytest.approx(2 / 3)
    assert report.f1 == pytest.approx(2 / 3)
    # Ranked: 0.9 TP (P 1, R 1/3), 0.8 TP (P 1, R 2/3), 0.2 FP (P 2/3, R 2/3) → 1/3·1 + 1/3·1 = 2/3.
    assert report.ap50 == pytest.approx(2 / 3)

    cut = evaluate_detector(
        annotations, half_size_stub(), images_root=faces_dir, score_threshold=0.5, progress=False
    )
    assert (cut.detections, cut.true_positives, cut.false_positives, cut.precision) == (2, 2, 0, 1.0)


def test_evaluate_detector_min_face(annotations: Path, faces_dir: Path):
    stub = half_size_stub()
    report = evaluate_detector(annotations, stub, images_root=faces_dir, min_face=300, progress=False)
    assert stub.scale_calls[0] == (1024, 1448, 300)
    assert stub.calls == [([(724, 512, 3), (384, 288, 3), (576, 448, 3)], [150.0, 150.0, 150.0])]
    # app1's 277 px face and pundo_1's 200 px face become ignore regions; the app1 detection (277 px) and
    # the 100 px stray are below 300 and unmatched → ignored; pundo_3's 328 px face is found.
    assert (report.faces, report.ignore_regions, report.detections, report.ignored) == (1, 2, 3, 2)
    assert (report.true_positives, report.false_positives, report.false_negatives) == (1, 0, 0)
    assert (report.precision, report.recall, report.f1, report.ap50) == (1.0, 1.0, 1.0, 1.0)
    assert "faces < 300 px ignored" in format_report(report, "stub")


def test_missing_image_is_reported_before_any_detection(tmp_path: Path, faces_dir: Path):
    path = write_annotations(tmp_path / "gt.json", [(APP1, 1024, 1448, []), ("nope.jpg", 10, 10, [])])
    stub = half_size_stub()
    with pytest.raises(InvalidArgument, match=r"1 of 2 images .* not found: .*nope\.jpg"):
        evaluate_detector(path, stub, images_root=faces_dir, progress=False)
    assert stub.calls == []


def test_many_missing_images_are_counted(tmp_path: Path):
    path = write_annotations(tmp_path / "gt.json", [(f"gone{i}.jpg", 10, 10, []) for i in range(8)])
    with pytest.raises(InvalidArgument, match=r"8 of 8 images .*gone4\.jpg and 3 more"):
        evaluate_detector(path, half_size_stub(), progress=False)


def test_malformed_coco_is_rejected(tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="not a COCO JSON file"):
        evaluate_detector(broken, half_size_stub(), progress=False)
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"annotations": []}), encoding="utf-8")
    with pytest.raises(InvalidArgument, match="no 'images' list"):
        evaluate_detector(no_images, half_size_stub(), progress=False)
    bad_box = write_annotations(tmp_path / "bad_box.json", [("a.jpg", 10, 10, [[1, 2, "x", 4]])])
    with pytest.raises(InvalidArgument, match="malformed bbox"):
        evaluate_detector(bad_box, half_size_stub(), progress=False)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(InvalidArgument, match="lists no images"):
        evaluate_detector(empty, half_size_stub(), progress=False)


def test_undecodable_image_is_named(tmp_path: Path, faces_dir: Path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    path = write_annotations(tmp_path / "gt.json", [("broken.jpg", None, None, [[0, 0, 5, 5]])])
    with pytest.raises(InvalidArgument, match=r"broken\.jpg does not decode"):
        evaluate_detector(path, half_size_stub(), progress=False)


def test_annotated_size_must_match_the_image(tmp_path: Path, faces_dir: Path):
    path = write_annotations(tmp_path / "gt.json", [(APP1, 1448, 1024, [[246, 174, 277, 277]])])
    with pytest.raises(InvalidArgument, match=r"1024x1448 as displayed but the annotations say 1448x1024"):
        evaluate_detector(path, half_size_stub(), images_root=faces_dir, progress=False)


def test_evaluate_detector_rejects_bad_settings(annotations: Path, faces_dir: Path):
    with pytest.raises(InvalidArgument, match="batch size"):
        evaluate_detector(annotations, half_size_stub(), images_root=faces_dir, batch_size=0, progress=False)
    with pytest.raises(InvalidArgument, match="IoU threshold"):
        evaluate_detector(
            annotations, half_size_stub(), images_root=faces_dir, iou_threshold=1.5, progress=False
        )


def test_cli_detect_eval_with_the_cascade(fixtures, tmp_path):
    """Through the CLI with the real cascade: both annotated faces found, the made-up one missed."""
    import json
    import subprocess
    import sys

    from detect.faces.coco import write_coco
    from tests.conftest import REPO

    faces = fixtures / "images" / "faces"
    gt = write_coco(
        tmp_path / "gt.json",
        [
            ("dbregion__code_app1.jpg", 1024, 1448, [Box.from_xywh(246, 174, 277, 277)]),
            (
                "pundo__imgs_3.jpg",
                576,
                768,
                [Box.from_xywh(82, 192, 328, 328), Box.from_xywh(400, 50, 100, 100)],
            ),
        ],
    )
    command = [
        sys.executable,
        "-m",
        "curate",
        "detect-eval",
        "--annotations",
        str(gt),
        "--images",
        str(faces),
    ]
    command += ["--cascade", str(fixtures / "models" / "lbpcascade_animeface.xml"), "--json", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["true_positives"], figures["false_positives"], figures["false_negatives"]) == (2, 0, 1)
    assert figures["precision"] == 1.0 and figures["recall"] == pytest.approx(2 / 3)
    assert figures["ap50"] == pytest.approx(2 / 3)  # two hits ranked first, then nothing: area 1 × 2/3
