"""The tagger: WD folders through timm, preprocessing by hand, thresholds, floor, categories, label names."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.errors import InvalidArgument, ModelError
from curate.tagnames import canonical_tag, merge_labels
from detect.tags.tagger import (
    Preprocessing,
    Tagger,
    TagList,
    Thresholds,
    read_prediction,
    read_selected_tags,
    resolve_tagger,
)
from tests.taggers import MEAN, STD, TAGS, make_model, probability, save_wd_folder

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def random_tagger(tmp_path_factory):
    """A tiny random ViT saved as a WD folder, and the in-memory model it came from."""
    model = make_model(fixed=False, seed=1)
    return save_wd_folder(model, tmp_path_factory.mktemp("wd") / "tagger"), model


def test_a_wd_folder_loads_and_matches_the_in_memory_model(random_tagger):
    folder, model = random_tagger
    tagger = Tagger(folder, device="cpu")
    assert tagger.tags.names == tuple(name for name, _, _ in TAGS) and tagger.input_size == 64
    assert tagger.preprocess.mean == pytest.approx(MEAN) and tagger.preprocess.std == pytest.approx(STD)
    batch = np.random.default_rng(0).normal(size=(3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(batch))).numpy()
    got = tagger.predict(batch)
    assert got.shape == (3, len(TAGS)) and np.allclose(got, expected, atol=1e-6)
    assert not np.allclose(got[0], got[1])  # a random head: the images differ
    with pytest.raises(InvalidArgument, match="3×64×64"):
        tagger.predict(batch[:, :, :32])


def test_offline_hub_id_without_files_is_a_clear_fast_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelError, match=r"not in the cache.*config\.json, model\.safetensors"):
        resolve_tagger("SmilingWolf/wd-vit-tagger-v3")
    assert time.monotonic() - start < 5


def test_broken_folders_are_model_errors(random_tagger, tmp_path):
    folder, _ = random_tagger
    with pytest.raises(ModelError, match=r"lacks selected_tags\.csv"):
        partial = tmp_path / "partial"
        partial.mkdir()
        (partial / "config.json").write_text((folder / "config.json").read_text())
        (partial / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        resolve_tagger(partial)
    with pytest.raises(ModelError, match="tagger folder not found"):
        resolve_tagger(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="neither a folder nor a hub id"):
        resolve_tagger("just-a-name")
    short = tmp_path / "short"
    short.mkdir()
    for name in ("config.json", "model.safetensors"):
        (short / name).write_bytes((folder / name).read_bytes())
    (short / "selected_tags.csv").write_text("tag_id,name,category,count\n1,solo,0,5\n")
    with pytest.raises(ModelError, match=r"10 outputs but selected_tags\.csv lists 1"):
        Tagger(short, device="cpu")


def test_a_folder_with_pytorch_model_bin_loads_and_model_safetensors_wins(random_tagger, tmp_path):
    """timm's save_for_hf without safe serialization writes pytorch_model.bin: that folder loads too."""
    _, model = random_tagger
    pickled = save_wd_folder(model, tmp_path / "pickled", safe=False)
    assert (pickled / "pytorch_model.bin").is_file() and not (pickled / "model.safetensors").exists()
    batch = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(batch))).numpy()
    assert np.allclose(Tagger(pickled, device="cpu").predict(batch), expected, atol=1e-6)
    # both files, of different models: model.safetensors is the one loaded
    other = make_model(fixed=True)
    both = save_wd_folder(model, tmp_path / "both", safe="both")
    torch.save(other.state_dict(), both / "pytorch_model.bin")
    assert np.allclose(Tagger(both, device="cpu").predict(batch), expected, atol=1e-6)
    (both / "model.safetensors").unlink()  # and without it, the other model's weights are
    fixed = Tagger(both, device="cpu").predict(batch)
    assert np.allclose(fixed, [probability(name) for name, _, _ in TAGS], atol=1e-6)


def test_a_pickle_with_objects_is_refused_unopened(random_tagger, tmp_path):
    """pytorch_model.bin loads with torch.load(weights_only=True): an object in it is never unpickled."""
    _, model = random_tagger
    marker = tmp_path / "ran"

    class Payload:  # unpickling it would call Path.touch(marker)
        def __reduce__(self):
            return Path.touch, (marker,)

    pickled = save_wd_folder(model, tmp_path / "pickled", safe=False)
    torch.save({**model.state_dict(), "payload": Payload()}, pickled / "pytorch_model.bin")
    with pytest.raises(
        ModelError, match=r"pytorch_model\.bin holds pickled objects \(.*pathlib.*\) besides tensors"
    ):
        Tagger(pickled, device="cpu")
    assert not marker.exists()


def test_a_folder_without_weights_names_both_files(random_tagger, tmp_path):
    folder, _ = random_tagger
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "selected_tags.csv"):
        (bare / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ModelError, match=r"lacks model\.safetensors or pytorch_model\.bin$"):
        resolve_tagger(bare)
    (bare / "config.json").unlink()
    with pytest.raises(ModelError, match=r"lacks config\.json, model\.safetensors or pytorch_model\.bin$"):
        resolve_tagger(bare)


def test_selected_tags_csv(tmp_path):
    path = tmp_path / "selected_tags.csv"
    path.write_text("tag_id,name,category,count\n9999999,general,9,1\n470575,1girl,0,2\n1,hatsune_miku,4,3\n")
    tags = read_selected_tags(path)
    assert tags.names == ("general", "1girl", "hatsune_miku") and tags.categories.tolist() == [9, 0, 4]
    path.write_text("id,label\n1,x\n")
    with pytest.raises(ModelError, match="name and category"):
        read_selected_tags(path)


def test_preprocessing_by_hand_alpha_padding_normalisation_and_bgr():
    # 2 wide, 1 high: an opaque red pixel and a fully transparent blue one
    image = Image.new("RGBA", (2, 1))
    image.putdata([(255, 0, 0, 255), (0, 0, 255, 0)])
    prep = Preprocessing(size=2, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = prep(image)
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    # padded to a white 2×2 square: row 0 is the image (red, then white from the flattened alpha),
    # row 1 is white padding; each channel normalised by its own mean/std, then B, G, R order
    rgb = np.array([[[255, 0, 0], [255, 255, 255]], [[255, 255, 255], [255, 255, 255]]]) / 255.0
    normalised = (rgb - [0.5, 0.25, 0.0]) / [0.5, 0.25, 1.0]
    expected = normalised[:, :, ::-1].transpose(2, 0, 1)
    assert np.allclose(out, expected, atol=1e-6)
    assert out[0, 0, 0] == pytest.approx(0.0) and out[2, 0, 0] == pytest.approx(1.0)  # B then R

    # a tall grey image is centred on white and resized bicubically, as Pillow does it
    tall = Image.new("L", (2, 4), 100)
    resized = Preprocessing(size=8, mean=(0, 0, 0), std=(1, 1, 1), bgr=False)(tall)
    square = Image.new("RGB", (4, 4), (255, 255, 255))
    square.paste(tall.convert("RGB"), (1, 0))
    reference = np.asarray(square.resize((8, 8), Image.BICUBIC), dtype=np.float32) / 255
    assert np.allclose(resized, reference.transpose(2, 0, 1), atol=1e-6)


def test_thresholds_floor_categories_and_rating():
    tags = TagList(tuple(name for name, _, _ in TAGS), np.array([c for _, c, _ in TAGS]))
    probs = np.array([probability(name) for name in tags.names], dtype=np.float32)
    prediction = read_prediction(probs, tags, Thresholds())
    assert prediction.general == ["1girl", "blue_eyes"]
    assert prediction.character == ["hatsune_miku"]
    assert prediction.rating == "general" and prediction.rating_score == pytest.approx(probability("general"))
    assert [name for name, _ in prediction.scored] == ["1girl", "hatsune_miku", "saber", "blue_eyes", "smile"]
    assert dict(prediction.scored)["smile"] == pytest.approx(probability("smile"), abs=1e-6)

    looser = read_prediction(probs, tags, Thresholds(general=0.2, character=0.7, floor=0.001))
    assert looser.general == ["1girl", "blue_eyes", "smile"] and looser.character == ["hatsune_miku", "saber"]
    assert "long_hair" in dict(looser.scored)
    with pytest.raises(InvalidArgument):
        Thresholds(general=1.5)
    with pytest.raises(InvalidArgument, match="floor"):
        Thresholds(general=0.3, floor=0.4)


def test_tag_names_and_label_provenance():
    assert canonical_tag("Blue eyes") == "blue_eyes" == canonical_tag(" blue_eyes ")
    assert canonical_tag("hatsune miku") == "hatsune_miku"
    labels, sources = merge_labels(["1girl", "blue_eyes"], ["blue eyes", "school_uniform", "1girl"])
    assert labels == ["1girl", "blue_eyes", "school_uniform"]
    assert sources == ["both", "both", "booru"]
    assert merge_labels(["smile"], []) == (["smile"], ["tagger"])
