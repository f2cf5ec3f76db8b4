"""tag-train on fixture crops: the loss falls, epochs resume exactly, the result loads as a tagger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from curate.errors import InvalidArgument
from curate.metrics import average_precision, micro_f1
from curate.workspace import Workspace
from detect.tags.tag_train import (
    Sample,
    TagTrainOptions,
    _Run,
    choose_vocabulary,
    train_tagger,
)
from detect.tags.tagger import CHARACTER, GENERAL, Tagger, preprocess_files
from tests.conftest import REPO, cascade_workspace

# images with one cascade face each; alternate booru tags give the tagger something to learn
IMAGES = (
    "bizarre___samples_megumin.png",
    "dbregion__code_app2.jpg",
    "pundo__imgs_1.jpg",
    "pundo__imgs_3.jpg",
    "rp__imgs_dsample1.jpg",
    "s2p__V1_images_test_11_.jpg",
    "s2p__V1_images_test_18_.jpg",
    "s2p__V1_images_test_22_.jpg",
    "s2p__V1_images_test_23_.jpg",
    "s2p__V1_images_test_4_.jpg",
    "s2p__V4_s2p_v4_server_refs_1.png",
    "s2p__V4_s2p_v4_server_refs_14.png",
)
FAST = {"backbone": "test_vit", "size": 64, "batch_size": 4, "lr": 3e-3, "device": "cpu", "progress": False}


def sidecar(index: int) -> dict:
    general = ["1girl", "red_hair" if index % 2 else "blue_hair"] + (["smile"] if index % 3 == 0 else [])
    return {"tags_general": " ".join(general), "tags_character": "megumin" if index == 0 else ""}


@pytest.fixture(scope="module")
def workspace(fixtures, tmp_path_factory) -> Workspace:
    sidecars = {name: sidecar(index) for index, name in enumerate(IMAGES)}
    return cascade_workspace(fixtures, tmp_path_factory.mktemp("tagtrain"), IMAGES, sidecars)


def options(out: Path, **overrides) -> TagTrainOptions:
    return TagTrainOptions(**{**FAST, "min_count": 1, "val_fraction": 0.3, "out": out, **overrides})


def test_loss_falls_and_the_result_loads_as_a_tagger(workspace, tmp_path):
    report = train_tagger(workspace.root, options(tmp_path / "run", epochs=6))
    assert report.train_faces + report.val_faces >= 12 and report.val_faces > 0
    assert set(report.labels) == {"1girl", "red_hair", "blue_hair", "smile", "megumin"}
    assert [e.epoch for e in report.epochs] == [1, 2, 3, 4, 5, 6] and report.resumed_from == 0
    losses = [e.loss for e in report.epochs]
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(e.val_map is not None and 0 <= e.val_map <= 1 for e in report.epochs)
    assert report.best is not None and report.best.is_dir() and report.last.is_dir()
    assert sorted(p.name for p in report.out.iterdir()) == [
        "best", "epoch-006", "last", "metrics.jsonl", "state.pt",
    ]  # fmt: skip

    tagger = Tagger(report.last, device="cpu")
    assert list(tagger.tags.names) == report.labels and tagger.input_size == 64
    categories = dict(zip(tagger.tags.names, tagger.tags.categories.tolist(), strict=True))
    assert categories["megumin"] == CHARACTER and categories["1girl"] == GENERAL
    crops = sorted((workspace.root / "crops").rglob("*.png"))
    probs = tagger.predict(preprocess_files(crops[:4], tagger.preprocess))
    assert probs.shape == (4, len(report.labels))
    assert probs[:, report.labels.index("1girl")].min() > 0.5  # on every face: learnt
    assert len((report.out / "metrics.jsonl").read_text().splitlines()) == 6


def test_a_killed_run_resumes_exactly(workspace, tmp_path, monkeypatch):
    whole = train_tagger(workspace.root, options(tmp_path / "whole", epochs=3))

    saving = _Run.save

    def save_then_die(self, result):
        saving(self, result)
        if self.epoch == 2:
            raise KeyboardInterrupt  # killed after epoch 2 was written

    monkeypatch.setattr(_Run, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_tagger(workspace.root, options(tmp_path / "killed", epochs=3))
    monkeypatch.setattr(_Run, "save", saving)
    resumed = train_tagger(workspace.root, options(tmp_path / "killed", epochs=3))
    assert resumed.resumed_from == 2 and [e.epoch for e in resumed.epochs] == [1, 2, 3]
    assert np.allclose([e.loss for e in resumed.epochs], [e.loss for e in whole.epochs], rtol=1e-4)

    again = train_tagger(workspace.root, options(tmp_path / "killed", epochs=3))
    assert again.up_to_date
    more = train_tagger(workspace.root, options(tmp_path / "killed", epochs=4))
    assert more.resumed_from == 3 and more.epochs[-1].epoch == 4
    with pytest.raises(InvalidArgument, match="holds a test_vit run"):
        train_tagger(workspace.root, options(tmp_path / "killed", epochs=5, backbone="test_resnet"))


def test_bce_and_a_convolutional_backbone(workspace, tmp_path):
    report = train_tagger(
        workspace.root,
        options(tmp_path / "conv", epochs=1, backbone="test_resnet", loss="bce", val_fraction=0),
    )
    assert report.val_faces == 0 and report.best is None and report.epochs[0].val_map is None
    assert Tagger(report.last, device="cpu").input_size == 64


def test_vocabulary_choice():
    samples = [
        Sample(f"f{i}", f"i{i}", "x.png", frozenset(tags))
        for i, tags in enumerate([{"a", "b"}, {"a"}, {"a", "c"}, {"b"}])
    ]
    assert choose_vocabulary(samples, TagTrainOptions(top=2, min_count=1)) == ["a", "b"]
    assert choose_vocabulary(samples, TagTrainOptions(top=9, min_count=2)) == ["a", "b"]
    assert choose_vocabulary(samples, TagTrainOptions(labels=["c", "Blue eyes"])) == ["c", "blue_eyes"]


def test_metrics_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.6]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    # column 0: ranked 0.9 (hit), 0.8, 0.3 (hit): precision at hits 1 and 2/3; column 1: one hit, first
    assert average_precision(scores, targets) == pytest.approx([(1 + 2 / 3) / 2, 1.0])
    assert np.isnan(average_precision(scores, np.zeros_like(targets))).all()
    # at 0.5: predicted (0,0), (1,0), (1,1), (3,1); true (0,0), (2,0), (1,1): tp 2, 4 predicted, 3 true
    assert micro_f1(scores, targets, 0.5) == pytest.approx(2 * 2 / (4 + 3))


def test_errors(workspace, tmp_path):
    with pytest.raises(InvalidArgument, match="curate crop"):
        train_tagger(tmp_path / "empty", options(tmp_path / "x"))
    with pytest.raises(InvalidArgument, match="--loss"):
        train_tagger(workspace.root, options(tmp_path / "x", loss="hinge"))
    with pytest.raises(InvalidArgument, match="--backbone"):
        train_tagger(workspace.root, options(tmp_path / "x", backbone="no_such_net"))
    with pytest.raises(InvalidArgument, match="lower --min-count"):
        train_tagger(workspace.root, options(tmp_path / "x", min_count=1000))


def test_cli(workspace, tmp_path):
    out = tmp_path / "cli"
    command = [
        sys.executable, "-m", "curate", "tag-train", "-w", str(workspace.root), "--backbone", "test_vit",
        "--size", "64", "--epochs", "1", "--batch-size", "4", "--min-count", "1", "--device", "cpu",
        "--out", str(out), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "tag-train test_vit: 5 labels" in done.stdout and "epoch 1: loss" in done.stdout
    assert f"curate tag --model {out / 'best'}" in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "nothing to do" in again.stdout
