"""`curate directions`: a known direction in W recovered, the real tagger path end to end, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.errors import InvalidArgument, ModelError
from tests.gan import COLOURS
from train.direction_fit import DirectionsOptions, Tagging, choose_tags, fit_directions, roc_auc
from train.directions import edit_ws, load_directions
from train.inference import load_generator

LABELS = [f"label_{i}" for i in range(4)]
# a tagger of the colour run's four labels (and a rating, as WD lists have), its head fitted below
COLOUR_TAGS = (*((name, 0, 0.0) for name in LABELS), ("general", 9, 2.0))
SIZE = 32


@pytest.fixture(scope="module")
def colour_tagger(tmp_path_factory) -> Path:
    """A tiny WD-format tagger that says label_i for images of colour i: a random ViT whose head is
    the least-squares map from its features of noisy flat colours to ±4 logits."""
    from PIL import Image

    from detect.tags.tagger import Preprocessing
    from tests.taggers import MEAN, STD, make_model, save_wd_folder

    model = make_model(SIZE, fixed=False, seed=3, tags=COLOUR_TAGS)
    preprocess = Preprocessing(SIZE, MEAN, STD)
    rng = np.random.default_rng(0)
    colours = np.arange(64) % len(COLOURS)
    pixels = COLOURS[colours][:, :, None, None] + 0.1 * rng.standard_normal((64, 3, 16, 16))
    images = ((np.clip(pixels, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
    batch = torch.from_numpy(np.stack([preprocess(Image.fromarray(image)) for image in images]))
    with torch.no_grad():
        features = model.forward_head(model.forward_features(batch), pre_logits=True)
        logits = torch.full((64, len(COLOUR_TAGS)), -4.0)
        logits[np.arange(64), colours] = 4.0
        logits[:, -1] = 2.0
        inputs = torch.cat([features, torch.ones(64, 1)], dim=1).double()
        head = torch.linalg.lstsq(inputs, logits.double(), driver="gelsd").solution.float()
        model.head.weight.copy_(head[:-1].T)
        model.head.bias.copy_(head[-1])
    return save_wd_folder(model, tmp_path_factory.mktemp("wd") / "colour-tagger", size=SIZE, tags=COLOUR_TAGS)


def standin(direction: torch.Tensor, cut: float) -> Tagging:
    """A tagger whose `toward` is on exactly when w·direction > cut, and `always` on every face."""

    def probabilities(images: np.ndarray, ws: torch.Tensor) -> np.ndarray:
        toward = (ws @ direction.to(ws.device) > cut).float().cpu().numpy()
        return np.stack([toward, np.ones_like(toward)], axis=1)

    return Tagging("stand-in", ["toward", "always"], probabilities)


def test_the_fit_recovers_a_known_direction_in_w(colour_run, tmp_path):
    direction = torch.randn(32, generator=torch.Generator().manual_seed(5))
    direction /= direction.norm()
    gen = load_generator(colour_run, device="cpu")
    z = torch.randn(1000, gen.z_dim, generator=torch.Generator().manual_seed(99))
    w = gen.ws(z, [[i % 4] for i in range(1000)])[:, 0]
    cut = float((w @ direction.to(w.device)).median())  # about half the faces are `toward`
    options = DirectionsOptions(
        run=colour_run, n=2000, tags=["toward", "always"], device="cpu", out=tmp_path, progress=False,
        tagging=standin(direction, cut),
    )  # fmt: skip
    report = fit_directions(options)

    assert report.labels_from.startswith("training set ")  # the run's own label rows, drawn at random
    assert [fit.name for fit in report.fits] == ["toward"]
    assert report.skipped == [("always", "2,000 of 2,000 samples positive; needs 40 positive and negative")]
    fit = report.fits[0]
    assert float(fit.vector @ direction) > 0.9 and float(fit.vector.norm()) == pytest.approx(1, abs=1e-5)
    assert fit.accuracy > 0.9 and fit.auc > 0.95 and fit.balanced_accuracy > 0.9
    assert fit.held_out == 400 and 0.3 < fit.positives / 2000 < 0.7
    assert fit.l2 == 1e-4  # a sharp boundary: the least regularisation of the grid fits it best

    saved = load_directions(tmp_path)
    assert saved.names == ["toward"] and torch.allclose(saved.vectors[0], fit.vector)
    assert saved.scales[0] == pytest.approx(fit.scale) and saved.accuracy == [pytest.approx(fit.accuracy)]
    assert saved.info["n"] == 2000 and saved.info["tagger"] == "stand-in"
    assert saved.info["positives"] == {"toward": fit.positives} and "always" in saved.info["skipped"]
    table = json.loads((tmp_path / "directions.json").read_text())
    assert [row["name"] for row in table["tags"]] == ["toward"] and table["skipped"][0]["name"] == "always"
    assert not (colour_run / "directions.pt").exists()  # --out kept the shared run untouched


def test_directions_end_to_end_with_a_wd_tagger_then_edit(colour_run, colour_tagger, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from curate.cli import app
    from detect.tags.tagger import Tagger

    run = shutil.copytree(colour_run, tmp_path / "run")
    args = ["directions", "--run", str(run), "--tagger", str(colour_tagger), "--n", "256", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"directions {run}: 4 tags from 256 samples" in result.output
    assert "label_0" in result.output and "directions.pt" in result.output

    directions = load_directions(run)
    assert directions.names == LABELS  # the run's labels the tagger knows, in the run's order
    assert all(0.8 <= a <= 1 for a in directions.accuracy)  # four colour clusters: w says which well
    assert torch.allclose(directions.vectors.norm(dim=1), torch.ones(4), atol=1e-5)
    assert directions.info["threshold"] == 0.35 and directions.info["tagger"] == str(colour_tagger)
    table = json.loads((run / "directions.json").read_text())
    assert [row["name"] for row in table["tags"]] == LABELS
    assert all(0 <= row["auc"] <= 1 and 0 < row["positive_share"] < 1 for row in table["tags"])

    # moving along label_0: every w's projection moves by strength × scale, nothing else changes
    gen = load_generator(run, device="cpu")
    ws = gen.ws(torch.randn(64, gen.z_dim, generator=torch.Generator().manual_seed(7)), [[1]] * 64)
    edited = edit_ws(ws, directions, {"label_0": 2.0})
    vector, scale = directions.vectors[0], float(directions.scales[0])
    moved = (edited - ws) @ vector
    assert torch.allclose(moved, torch.full_like(moved, 2.0 * scale), atol=1e-4)
    assert torch.allclose(edited - ws, (2.0 * scale * vector).expand_as(ws), atol=1e-5)
    # …and the tagger sees more of label_0 in label_1's faces moved toward it
    tagger = Tagger(colour_tagger, "cpu")

    def label_0(batch: torch.Tensor) -> float:
        images = np.concatenate(list(gen.images(batch)))
        return float(
            tagger.predict(np.stack([tagger.preprocess(Image.fromarray(i)) for i in images]))[:, 0].mean()
        )

    assert label_0(edit_ws(ws, directions, {"label_0": 3.0})) > label_0(ws) + 0.2
    with pytest.raises(InvalidArgument, match=r"'labl_0': no such direction \(nearest: label_0"):
        edit_ws(ws, directions, {"labl_0": 1.0})


def test_tag_names_the_tagger_lacks_or_spells_otherwise():
    vocabulary = ["general", "blue_eyes", "twintails", "smile"]
    assert choose_tags(["Blue eyes", "twin tails"], [], vocabulary) == (
        [("blue_eyes", 1), ("twintails", 2)],
        [],
    )
    assert choose_tags(None, ["smile", "hat"], vocabulary) == ([("smile", 3)], ["hat"])
    with pytest.raises(
        InvalidArgument, match=r"--tags 'blue_eye'.*4 tags do not include it; nearest: blue_eyes"
    ):
        choose_tags(["blue_eye"], [], vocabulary)
    with pytest.raises(InvalidArgument, match=r"unconditional.*name tags with --tags"):
        choose_tags(None, [], vocabulary)
    with pytest.raises(InvalidArgument, match="none of the run's 1 labels"):
        choose_tags(None, ["hat"], vocabulary)


def test_a_run_without_a_snapshot_or_with_an_unknown_tag_is_a_clear_error(
    colour_run, colour_tagger, tmp_path
):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no snapshot yet"):
        fit_directions(DirectionsOptions(run=empty, tagger=colour_tagger, device="cpu", progress=False))
    options = DirectionsOptions(
        run=colour_run, tagger=colour_tagger, tags=["label_9"], device="cpu", out=tmp_path, progress=False
    )
    with pytest.raises(
        InvalidArgument, match=r"--tags 'label_9': the tagger's 5 tags do not include it; nearest: label_3"
    ):
        fit_directions(options)
    with pytest.raises(InvalidArgument, match="--n 10"):
        fit_directions(DirectionsOptions(run=colour_run, n=10, progress=False))
    assert not list(tmp_path.glob("directions.*"))


def test_auc_counts_ties_half():
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.9])
    truth = np.array([False, False, True, True, False])
    # pairs (positive, negative): 0.4 vs 0.1 ✓, 0.4 vs 0.4 ½, 0.4 vs 0.9 ✗, 0.8 vs 0.1 ✓, 0.4 ✓, 0.9 ✗
    assert roc_auc(scores, truth) == pytest.approx(3.5 / 6)
    assert np.isnan(roc_auc(scores, np.zeros(5, bool)))


def test_label_sets_come_from_the_training_set_or_else_one_random_label_each(tmp_path):
    from types import SimpleNamespace

    from tests.gan import colour_set
    from train.direction_fit import label_rows

    data = colour_set(tmp_path / "data", count=8)  # labels 0, 1, 2, 3, 0, 1, 2, 3
    gen = SimpleNamespace(c_dim=4, dataset={"path": str(data)})
    rows, where = label_rows(gen, 400, np.random.default_rng(0))
    assert where == f"training set {data}" and all(len(row) == 1 for row in rows)
    assert all(80 <= n <= 120 for n in np.bincount([row[0] for row in rows], minlength=4))
    gen.dataset["path"] = str(tmp_path / "moved")
    rows, where = label_rows(gen, 400, np.random.default_rng(0))
    assert where == f"one random label per sample ({tmp_path / 'moved'} is not readable)"
    assert sorted({row[0] for row in rows}) == [0, 1, 2, 3] and all(len(row) == 1 for row in rows)
    assert label_rows(SimpleNamespace(c_dim=0, dataset={}), 3, np.random.default_rng(0)) == (
        [[], [], []],
        "none (unconditional)",
    )
