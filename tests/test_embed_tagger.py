"""The WD tagger in `curate embed`: its pooled features (--features tagger), and its backbone as the start
of instance discrimination (--init tagger), with a tiny random tagger in the WD on-disk format."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("faiss")

from curate.errors import InvalidArgument, ModelError  # noqa: E402
from curate.manifest import CROP, EMBED, part_files, part_metadata, read_stage  # noqa: E402
from curate.shard import Shard  # noqa: E402
from curate.workspace import Workspace  # noqa: E402
from detect.tags.tagger import Preprocessing, preprocess_files  # noqa: E402
from embed.stage import EmbedOptions, embed_faces, embed_files, read_embeddings  # noqa: E402
from embed.train import EmbedTrainOptions, load_network, train_embedding  # noqa: E402
from tests.conftest import TEN_ILLUSTRATIONS, cascade_workspace  # noqa: E402
from tests.taggers import MEAN, STD, make_model, save_wd_folder  # noqa: E402

FAST = {"dim": 16, "batch_size": 4, "device": "cpu", "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def workspace(fixtures, tmp_path_factory) -> Workspace:
    return cascade_workspace(fixtures, tmp_path_factory.mktemp("embed-tagger"), TEN_ILLUSTRATIONS)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tiny random ViT tagger (64 px, random head: every image gets its own features) as a WD folder,
    and the in-memory model it was saved from."""
    model = make_model(fixed=False, seed=3)
    return save_wd_folder(model, tmp_path_factory.mktemp("wd") / "tagger"), model


def copy_of(workspace: Workspace, root: Path) -> Workspace:
    shutil.copytree(workspace.root, root)
    return Workspace.open(root)


def crops_by_id(ws: Workspace) -> dict[str, Path]:
    return {
        r["face_id"]: ws.root / r["path"] for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"
    }


def pooled(model, paths: list[Path]) -> np.ndarray:
    """The model's pre-head features of the files, preprocessed as a WD tagger is (mean/std of the
    fixture's config, BGR), L2-normalised: computed here without the Tagger class or the embed stage."""
    batch = torch.from_numpy(preprocess_files(paths, Preprocessing(64, MEAN, STD, bgr=True)))
    with torch.no_grad():
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
    return torch.nn.functional.normalize(features, dim=1).numpy()


def test_tagger_features_are_the_taggers_pooled_features(workspace, tagger, tmp_path):
    folder, model = tagger
    ws = copy_of(workspace, tmp_path / "ws")
    settings = EmbedTrainOptions(**FAST)
    report = embed_faces(ws.root, EmbedOptions(train=settings, features=f"tagger:{folder}", progress=False))
    name = f"tagger:{folder.resolve()}"
    crops = crops_by_id(ws)
    assert report.model == name and report.faces == len(crops) and report.training is None
    ids, vectors, model_name = read_embeddings(ws)
    assert model_name == name and sorted(ids) == sorted(crops) and vectors.shape == (len(crops), 64)
    expected = pooled(model, [crops[i] for i in ids])
    assert np.allclose(vectors, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cosines = (vectors @ vectors.T)[~np.eye(len(ids), dtype=bool)]
    assert cosines.max() < 0.999  # the random head's features tell the crops apart
    params = part_metadata(part_files(ws, EMBED)[-1])["params"]
    assert params["model"] == name and params["size"] == 64 and params["dim"] == 64
    assert report.index.dim == 64 and report.index.vectors == len(crops)

    # done faces are not embedded again, shards share the work, and example files (the filter's seed
    # folders) are embedded by the manifest's model name alone, as the crops were
    again = embed_faces(ws.root, EmbedOptions(train=settings, features=f"tagger:{folder}", progress=False))
    assert again.faces == 0 and again.already_done == len(crops)
    halves = [
        embed_faces(
            ws.root,
            EmbedOptions(train=settings, features=f"tagger:{folder}", shard=Shard(k, 2), force=True),
        )
        for k in range(2)
    ]
    assert sum(h.faces for h in halves) == len(crops) and {h.model for h in halves} == {name}
    assert np.allclose(
        embed_files(ws, name, [crops[i] for i in ids[:3]], device="cpu"), vectors[:3], atol=1e-5
    )


def test_bad_tagger_values_are_clear_errors(workspace, tagger, tmp_path, monkeypatch):
    folder, _ = tagger
    ws = copy_of(workspace, tmp_path / "ws")

    def run(**options):
        embed_faces(
            ws.root, EmbedOptions(train=EmbedTrainOptions(**FAST, init=options.pop("init", None)), **options)
        )

    with pytest.raises(InvalidArgument, match="tagger folder not found: /no/such/folder"):
        run(features="tagger:/no/such/folder")
    with pytest.raises(InvalidArgument, match=r"--features must look like timm:<model name> or tagger"):
        run(features="tagged")
    with pytest.raises(InvalidArgument, match="neither a tagger folder nor a hub id"):
        run(features="tagger:not-a-hub-id")
    with pytest.raises(InvalidArgument, match="--init must be tagger or tagger:<hub id or tagger folder>"):
        run(init="timm:resnet18")
    with pytest.raises(InvalidArgument, match="give one or the other"):
        run(init=f"tagger:{folder}", features=f"tagger:{folder}")
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match=r"SmilingWolf/wd-vit-tagger-v3 is not in the cache"):
        run(features="tagger")  # the default tagger, offline and not cached


def backbone_weights(state: dict) -> dict:
    return {
        key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")
    }


def test_init_from_the_tagger_starts_from_its_weights_and_resumes(workspace, tagger, tmp_path, monkeypatch):
    folder, model = tagger
    paths = sorted(crops_by_id(workspace).values())
    out = tmp_path / "model"
    init = f"tagger:{folder}"
    # lr 0: one epoch through the real training path leaves the weights as they started (SGD's step,
    # weight decay and momentum are all scaled by the learning rate; a ViT has no BatchNorm statistics)
    first = train_embedding(paths, out, EmbedTrainOptions(**FAST, init=init, epochs=1, lr=0.0))
    assert first.epochs == 1 and np.isfinite(first.losses).all()
    saved = torch.load(out / "last.pt", weights_only=True)
    headless = make_model(fixed=False, seed=3)
    headless.reset_classifier(0)
    reference = headless.state_dict()
    start = backbone_weights(saved["model"])
    assert start.keys() == reference.keys() and all(torch.equal(start[k], reference[k]) for k in reference)
    assert saved["init"] == f"tagger:{folder.resolve()}" and saved["backbone"] == "test_vit"
    assert saved["size"] == 64 and saved["preprocessing"] == {
        "size": 64,
        "mean": list(MEAN),
        "std": list(STD),
        "bgr": True,
    }

    # the loaded network's backbone is the tagger's pooled features; its inputs are the tagger's
    network, settings = load_network(out / "last.pt", "cpu")
    assert settings["init"] == saved["init"] and settings["size"] == 64
    batch = torch.from_numpy(preprocess_files(paths[:4], Preprocessing(64, MEAN, STD)))
    with torch.no_grad():
        ours = network.backbone(batch)
        theirs = model.forward_head(model.forward_features(batch), pre_logits=True)
    assert torch.allclose(ours, theirs, atol=1e-5)

    # training goes on from the checkpoint (the same folder spelt another way is the same start)
    monkeypatch.chdir(folder.parent)
    more = train_embedding(paths, out, EmbedTrainOptions(**FAST, init="tagger:./tagger", epochs=3, lr=0.05))
    assert more.resumed_from == 1 and more.epochs == 3 and len(more.losses) == 3
    moved = backbone_weights(torch.load(out / "last.pt", weights_only=True)["model"])
    assert any(not torch.equal(moved[k], reference[k]) for k in reference)
    with pytest.raises(
        InvalidArgument, match=r"is from tagger:.* run over .* not a resnet18 .*--force starts"
    ):
        train_embedding(paths, out, EmbedTrainOptions(**FAST, epochs=3))
    fresh = train_embedding(paths, out, EmbedTrainOptions(**FAST, init=init, epochs=1, lr=0.0, force=True))
    assert fresh.resumed_from == 0 and fresh.epochs == 1


def test_cli_trains_from_the_tagger_and_embeds(workspace, tagger, tmp_path):
    from typer.testing import CliRunner

    from curate.cli import app

    folder, _ = tagger
    ws = copy_of(workspace, tmp_path / "ws")
    common = [
        "embed",
        "-w",
        str(ws.root),
        "--dim",
        "8",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--workers",
        "0",
    ]
    result = CliRunner().invoke(app, [*common, "--init", f"tagger:{folder}", "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    name = f"instdisc:tagger:{folder.resolve()}"
    assert "embed-train epochs 0 → 1 (exact softmax)" in result.output and f"embed ({name})" in result.output
    ids, vectors, model_name = read_embeddings(ws)
    assert model_name == name and vectors.shape == (len(crops_by_id(ws)), 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    crops = crops_by_id(ws)
    # example files go through the tagger's preprocessing, as the crops did
    assert np.allclose(
        embed_files(ws, name, [crops[i] for i in ids[:2]], device="cpu"), vectors[:2], atol=1e-5
    )
    # the fine-tuned filter score trains this network too, on crops framed as the tagger sees them
    from embed.filter import FilterOptions, filter_faces

    order = sorted(ids)
    tuned = filter_faces(
        ws.root, FilterOptions(good=order[:3], bad=order[3:6], score="finetuned", dedup=None)
    )
    assert tuned.score == "finetuned" and tuned.faces == len(ids)

    # rows are never named for a network other than the one that made them
    with pytest.raises(InvalidArgument, match=rf"holds {name}, not instdisc:resnet18"):
        embed_faces(ws.root, EmbedOptions(train=EmbedTrainOptions(**FAST), retrain=False, force=True))
    refused = CliRunner().invoke(app, [*common, "--init", "tagger", "--backbone", "resnet18"])
    assert isinstance(refused.exception, InvalidArgument) and "drop --backbone/--size" in str(
        refused.exception
    )
