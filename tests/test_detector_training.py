"""Training the Faster R-CNN: the loss falls, checkpoints reload and resume exactly, boxes map back."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from curate.errors import InvalidArgument, ModelError  # noqa: E402
from detect.faces.boxes import Box, iou  # noqa: E402
from detect.faces.coco import CocoImage  # noqa: E402
from detect.faces.decode import Decoded, decode  # noqa: E402
from detect.faces.detector_training import (  # noqa: E402
    BatchPlan,
    Schedule,
    average_precision,
    boxes_for_training,
    train_detector,
)
from detect.faces.frcnn import FasterRCNNDetector, load_model  # noqa: E402

# One face per image, from the fixture manifest's notes (pixels of the original).
FACE = ("pundo__imgs_3.jpg", 576, 768, Box.from_xywh(82, 192, 328, 328))
OTHER = ("rp__imgs_dsample1.jpg", 512, 768, Box.from_xywh(98, 108, 330, 330))
NEGATIVE = ("s2p__V1_images_test_19_.jpg", 274, 300, None)  # trained on as a negative: no box
# Tiny inputs keep a from-scratch ResNet-50 step under half a second on two cores.
FAST = {"min_size": 96, "max_size": 192, "rois_per_image": 64, "device": "cpu", "progress": False}
OVERFIT_STEPS = 40


def sample(fixtures: Path, spec: tuple, image_id: int = 1) -> CocoImage:
    name, width, height, box = spec
    return CocoImage(image_id, fixtures / "images" / "faces" / name, width, height, [box] if box else [])


@pytest.fixture(scope="module")
def overfit(fixtures, tmp_path_factory):
    """A model trained from scratch on one face until it finds it (shared: it is the slow part)."""
    out = tmp_path_factory.mktemp("overfit")
    face = sample(fixtures, FACE)
    result = train_detector(
        [face], out, init="scratch", steps=OVERFIT_STEPS, batch_size=1, lr=0.02, checkpoint_every=20, **FAST
    )
    return face, result


def test_loss_falls_and_checkpoints_are_written(overfit):
    _, result = overfit
    assert result.steps == OVERFIT_STEPS and result.resumed_from == 0
    assert len(result.losses) == OVERFIT_STEPS and all(math.isfinite(x) for x in result.losses)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.6 * first, result.losses
    assert result.last == result.checkpoint and result.last.name == "last.pt" and result.best is None
    folder = result.last.parent
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-0000020.pt", "step-0000040.pt"]


def test_checkpoint_reloads_and_finds_the_face_in_original_pixels(overfit):
    face, result = overfit
    model, info = load_model(result.last)
    assert info["format"] == "curate.frcnn" and info["step"] == OVERFIT_STEPS
    assert info["config"]["trainable_norm"] is True and not model.training

    detector = FasterRCNNDetector(
        model_path=result.last, device="cpu", score_threshold=0.0, min_size=96, max_size=192
    )
    scale = detector.decode_scale(face.width, face.height, 0)
    decoded = decode(face.path, scale_for=lambda w, h: scale)  # as the crop stage does
    assert decoded.scale < 0.5 and (decoded.width, decoded.height) == (face.width, face.height)
    found = [b.scaled(1 / decoded.scale) for b in detector.detect([decoded.rgb])[0]]
    assert found
    slack = 1 / decoded.scale  # one pixel of the reduced copy
    for box in found:
        assert (
            -slack <= box.x0 < box.x1 <= face.width + slack
            and -slack <= box.y0 < box.y1 <= face.height + slack
        )
    # the training box (original pixels, 328 px wide) is far outside the 128-px copy: an overlap proves
    # the boxes came back to original pixels, and that the model learnt where the face is
    assert max(iou(box, face.boxes[0]) for box in found[:3]) >= 0.4, found[:3]


def test_resume_continues_exactly_where_it_stopped(fixtures, tmp_path):
    samples = [sample(fixtures, FACE, 1), sample(fixtures, OTHER, 2), sample(fixtures, NEGATIVE, 3)]
    settings = {"init": "scratch", "batch_size": 1, "lr": 0.01, "seed": 3, "val_samples": samples[:1], **FAST}
    whole = train_detector(samples, tmp_path / "whole", steps=4, checkpoint_every=2, **settings)
    assert [s for s, _ in whole.validation] == [2, 4] and whole.best is not None and whole.best.is_file()

    # a run stopped after its step-2 checkpoint, then started again with the same arguments
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copyfile(tmp_path / "whole" / "step-0000002.pt", stopped / "last.pt")
    resumed = train_detector(samples, stopped, steps=4, checkpoint_every=2, **settings)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert resumed.losses[:2] == whole.losses[:2]
    assert np.allclose(resumed.losses[2:], whole.losses[2:], rtol=1e-4)
    assert [s for s, _ in resumed.validation] == [2, 4]

    # a later call asking for more steps carries on; one asking for no more does nothing
    more = train_detector(samples, stopped, steps=5, checkpoint_every=2, **settings)
    assert more.resumed_from == 4 and more.steps == 5 and more.losses[:4] == resumed.losses
    assert load_model(more.last)[1]["step"] == 5
    again = train_detector(samples, stopped, steps=5, checkpoint_every=2, **settings)
    assert again.resumed_from == 5 and again.losses == more.losses


def test_boxes_for_training_scale_clip_flip_and_drop():
    decoded = Decoded(np.zeros((50, 100, 3), np.uint8), 200, 100, 0.5, 1, "RGB", False)
    boxes = [Box(20, 10, 60, 50), Box(-10, -10, 30, 20), Box(190, 10, 199, 90), Box(300, 0, 400, 10)]
    plain = boxes_for_training(boxes, decoded)
    assert plain.dtype == np.float32 and plain.tolist() == [
        [10, 5, 30, 25],
        [0, 0, 15, 10],
        [95, 5, 99.5, 45],
    ]
    flipped = boxes_for_training(boxes[:1], decoded, flip=True)
    assert flipped.tolist() == [[70, 5, 90, 25]]
    assert boxes_for_training([], decoded).shape == (0, 4)


def test_batch_plan_is_a_function_of_seed_and_step():
    plan = BatchPlan(5, 2, seed=7)
    assert plan.batch(3) == BatchPlan(5, 2, seed=7).batch(3)
    epoch = [index for step in range(5) for index, _ in plan.batch(step)]  # 10 picks = 2 epochs
    assert sorted(epoch[:5]) == sorted(epoch[5:]) == [0, 1, 2, 3, 4]
    flips = [f for step in range(50) for _, f in plan.batch(step)]
    assert 20 < sum(flips) < 80
    assert not any(f for step in range(5) for _, f in BatchPlan(5, 2, seed=7, flip=False).batch(step))


def test_schedule_warms_up_then_steps_down():
    schedule = Schedule(lr=0.02, steps=90, warmup=10)
    assert schedule.at(0) == pytest.approx(0.02 * 0.001)
    assert schedule.at(5) < schedule.at(9) < schedule.at(10) == pytest.approx(0.02)
    assert schedule.at(59) == pytest.approx(0.02) and schedule.at(60) == pytest.approx(0.002)
    assert schedule.at(80) == pytest.approx(0.0002)


def test_average_precision():
    truth = [[Box(0, 0, 10, 10)], [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]]
    perfect = [[Box(0, 0, 10, 10, 0.9)], [Box(0, 0, 10, 10, 0.8), Box(20, 20, 30, 30, 0.7)]]
    assert average_precision(perfect, truth) == pytest.approx(1.0)
    assert average_precision([[], []], truth) == 0.0
    # a confident false positive first, then the three hits: precision 1/2, 2/3, 3/4 at recall 1/3, 2/3, 1
    noisy = [[Box(50, 50, 60, 60, 0.99), *perfect[0]], perfect[1]]
    assert average_precision(noisy, truth) == pytest.approx((0.75 + 0.75 + 0.75) / 3)
    ignored = average_precision(noisy, truth, ignore=[[Box(50, 50, 60, 60)], []])
    assert ignored == pytest.approx(1.0)
    duplicate = [[Box(0, 0, 10, 10, 0.9), Box(0, 0, 10, 10, 0.8)], []]
    assert average_precision(duplicate, [[Box(0, 0, 10, 10)], []]) == pytest.approx(1.0)


def test_pretrained_init_needs_the_registry_model(fixtures, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CURATE_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError, match="anime-face-frcnn"):
        train_detector([sample(fixtures, FACE)], tmp_path / "run", init="pretrained", steps=1, **FAST)
    assert time.monotonic() - start < 10


def test_arguments_are_checked(fixtures, tmp_path):
    with pytest.raises(InvalidArgument):
        train_detector([], tmp_path, steps=1, **FAST)
    with pytest.raises(InvalidArgument):
        train_detector([sample(fixtures, FACE)], tmp_path, steps=0, **FAST)
    missing = CocoImage(1, tmp_path / "missing.jpg", 10, 10, [])
    with pytest.raises(InvalidArgument, match=r"missing\.jpg"):
        train_detector([missing], tmp_path / "run", init="scratch", steps=1, **FAST)
