"""Instance-discrimination training on fixture crops, the embed stage, its index, resume and errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")

import embed.nce  # noqa: E402
from curate.errors import InvalidArgument, ModelError  # noqa: E402
from curate.manifest import CROP, EMBED, part_files, part_metadata, read_stage  # noqa: E402
from curate.shard import Shard  # noqa: E402
from curate.workspace import Workspace  # noqa: E402
from embed.stage import INDEX_FILE, INDEX_IDS, INDEX_INFO, EmbedOptions, embed_faces  # noqa: E402
from embed.train import (  # noqa: E402
    EmbedTrainOptions,
    eval_transform,
    load_network,
    train_embedding,
    training_transform,
)
from tests.conftest import REPO, TEN_ILLUSTRATIONS, cascade_workspace  # noqa: E402

FAST = {"backbone": "test_resnet", "dim": 16, "size": 48, "batch_size": 4, "device": "cpu", "workers": 0}


@pytest.fixture(scope="module")
def workspace(fixtures, tmp_path_factory) -> Workspace:
    return cascade_workspace(fixtures, tmp_path_factory.mktemp("embed"), TEN_ILLUSTRATIONS)


def crop_paths(ws: Workspace) -> list[Path]:
    return [ws.root / r["path"] for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"]


def options(**overrides) -> EmbedTrainOptions:
    return EmbedTrainOptions(**{**FAST, "epochs": 8, "progress": False, **overrides})


@pytest.fixture(scope="module")
def trained(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    # the whole set in one batch (steady BatchNorm statistics) for long enough that the bank separates
    settings = options(epochs=100, lr=0.1, batch_size=12)
    return train_embedding(crop_paths(workspace), out, settings), out


def test_training_lowers_the_loss_and_an_augmented_copy_stays_near(workspace, trained):
    result, _ = trained
    assert result.full_softmax and result.epochs == 100 and len(result.losses) == 100
    uniform = np.log(len(crop_paths(workspace)))  # the loss of an embedding that tells no image apart
    assert np.mean(result.losses[-10:]) < 0.75 * uniform < result.losses[0], result.losses

    from PIL import Image

    network, settings = load_network(result.checkpoint, "cpu")
    assert settings == {"backbone": "test_resnet", "dim": 16, "size": 48, "epoch": 100}
    plain, augment = eval_transform(48), training_transform(48)
    torch.manual_seed(0)
    images = [Image.open(p).convert("RGB") for p in crop_paths(workspace)]
    with torch.no_grad():
        originals = network(torch.stack([plain(i) for i in images]))
        copies = network(torch.stack([augment(i) for i in images]))
    assert torch.allclose(originals.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    # each augmented copy is nearer its own image than any other image is, and than images are to each other
    similarity = copies @ originals.T
    found = similarity.argmax(dim=1)
    assert (found == torch.arange(len(images))).float().mean() >= 0.5, similarity  # chance: 1 in 11
    others = (originals @ originals.T)[~torch.eye(len(images), dtype=torch.bool)]
    assert similarity.diagonal().mean() > others.mean()


def test_nce_path_and_exact_resume(workspace, tmp_path, monkeypatch):
    import embed.train

    paths = crop_paths(workspace)
    settings = {"negatives": 2, "epochs": 3}  # 2 noise samples: NCE even on a dozen crops
    whole = train_embedding(paths, tmp_path / "whole", options(**settings))
    assert not whole.full_softmax and all(np.isfinite(whole.losses))

    saving = embed.train._save

    def save_then_die(path, *args, **kwargs):
        saving(path, *args, **kwargs)
        if args[4] == 2:  # the epoch just saved
            raise KeyboardInterrupt

    monkeypatch.setattr(embed.train, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_embedding(paths, tmp_path / "resumed", options(**settings))
    monkeypatch.setattr(embed.train, "_save", saving)
    resumed = train_embedding(paths, tmp_path / "resumed", options(**settings))
    assert resumed.resumed_from == 2 and np.allclose(resumed.losses, whole.losses, rtol=1e-4)
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert saved["z"] > 0 and saved["epoch"] == 3
    with pytest.raises(InvalidArgument, match="--force starts a new one"):
        train_embedding(paths[:-1], tmp_path / "resumed", options(**settings))


def test_the_stage_embeds_every_crop_and_indexes_them(workspace, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    shutil.copytree(workspace.root, ws.root, dirs_exist_ok=True)
    with pytest.raises(InvalidArgument, match="without --shard first"):
        embed_faces(ws.root, EmbedOptions(train=options(epochs=1), shard=Shard(0, 2), progress=False))
    report = embed_faces(ws.root, EmbedOptions(train=options(epochs=2), progress=False))
    crops = {r["face_id"] for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"}
    rows = read_stage(ws, EMBED).to_pylist()
    assert report.model == "instdisc:test_resnet" and report.faces == len(crops) == len(rows)
    assert {r["face_id"] for r in rows} == crops and all(len(r["embedding"]) == 16 for r in rows)
    assert np.allclose([np.linalg.norm(r["embedding"]) for r in rows], 1, atol=1e-5)
    assert part_metadata(part_files(ws, EMBED)[-1])["params"]["dim"] == 16
    assert report.index.kind == "flat" and report.index.recall_at_k == 1.0

    import faiss

    folder = ws.models / "embed"
    index = faiss.read_index(str(folder / INDEX_FILE))
    ids = (folder / INDEX_IDS).read_text().split()
    assert index.ntotal == len(ids) == len(rows) and set(ids) == crops
    assert json.loads((folder / INDEX_INFO).read_text())["model"] == "instdisc:test_resnet"
    first = np.asarray(rows[0]["embedding"], dtype=np.float32)[None]
    _, found = index.search(first, 1)
    assert ids[found[0, 0]] == rows[0]["face_id"]

    again = embed_faces(ws.root, EmbedOptions(train=options(epochs=2), progress=False))
    assert again.faces == 0 and again.training.resumed_from == 2
    halves = [
        embed_faces(
            ws.root, EmbedOptions(train=options(epochs=2), shard=Shard(k, 2), force=True, progress=False)
        )
        for k in range(2)
    ]
    assert sum(h.faces for h in halves) == len(crops) and all(h.training is None for h in halves)


def test_pretrained_features_offline_is_a_clear_error(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ws = Workspace.open(tmp_path / "ws")
    shutil.copytree(workspace.root, ws.root, dirs_exist_ok=True)
    with pytest.raises(ModelError, match="pretrained weights of resnet18 are not available"):
        embed_faces(ws.root, EmbedOptions(features="timm:resnet18", progress=False))
    with pytest.raises(InvalidArgument, match="timm:<model name>"):
        embed_faces(ws.root, EmbedOptions(features="clip", progress=False))


def test_cli(workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(workspace.root, ws)
    command = [
        sys.executable, "-m", "curate", "embed", "-w", str(ws), "--backbone", "test_resnet", "--dim", "8",
        "--size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "embed-train epochs 0 → 1 (exact softmax)" in done.stdout
    assert "index: flat over" in done.stdout and "recall@10 1.000" in done.stdout


def test_torchrun_trains_in_two_processes_with_one_bank(workspace, tmp_path):
    """Two CPU processes (gloo over loopback): the run completes, every crop reaches the bank, and the
    first process alone writes the checkpoint and the manifest."""
    ws = tmp_path / "ws"
    shutil.copytree(workspace.root, ws)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "curate", "embed", "-w", str(ws),
        "--backbone", "test_resnet", "--dim", "8", "--size", "32", "--epochs", "1", "--batch-size", "5",
        "--device", "cpu", "--workers", "0", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(ws / "models" / "embed" / "last.pt", weights_only=True)
    crops = crop_paths(Workspace.open(ws))
    assert saved["processes"] == 2 and saved["epoch"] == 1 and np.isfinite(saved["losses"][0])
    # in one epoch the two processes took 5 of the 11 crops each in one batch, and the bank the
    # first process saved holds the features of both halves
    start = embed.nce.MemoryBank(len(crops), 8, seed=0).vectors
    moved = (saved["bank"]["vectors"] - start).norm(dim=1) > 1e-3
    assert int(moved.sum()) == len(crops) // 2 * 2, moved
    rows = read_stage(Workspace.open(ws), EMBED).to_pylist()
    assert len(rows) == len(crops) and len({r["face_id"] for r in rows}) == len(rows)
