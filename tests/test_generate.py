"""`curate generate` on the session's colour run: labels draw their colours, seeds are stable, truncation
goes to each label set's mean w, grids, mixing, interpolation, edits, the output folder and errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import InvalidArgument
from tests.gan import COLOURS
from train.generate import GenerateOptions, generate
from train.grids import MARGIN
from train.inference import load_generator, seed_z

SCALE = 4  # the 16² tiles are enlarged to 64 in grids


def run_generate(run: Path, out: Path, **options) -> object:
    return generate(GenerateOptions(run=run, out=out, device="cpu", progress=False, **options))


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def tiles(grid_png: Path, margin: bool = True) -> list[list[np.ndarray]]:
    """The 16² images of a saved grid, by row, at their own size (the enlargement is by whole pixels)."""
    grid = png(grid_png)[:, MARGIN if margin else 0 :][::SCALE, ::SCALE]
    rows, columns = grid.shape[0] // 16, grid.shape[1] // 16
    return [[grid[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] for c in range(columns)] for r in range(rows)]


def nearest_colour(image: np.ndarray) -> int:
    mean = image.reshape(-1, 3).mean(axis=0) / 127.5 - 1
    return int(np.argmin(((COLOURS - mean) ** 2).sum(axis=1)))


def test_a_label_draws_its_colour_and_a_seed_is_the_same_face_in_any_batch(colour_run, tmp_path):
    report = run_generate(colour_run, tmp_path / "a", tags="label_2", n=24, seed=1, batch=5)
    files = sorted(report.out.glob("seed*.png"))
    assert [f.name for f in files[:2]] == ["seed0001.png", "seed0002.png"] and len(files) == 24
    blue = np.mean([nearest_colour(png(f)) == 2 for f in files])
    assert blue >= 0.9, blue
    again = run_generate(colour_run, tmp_path / "b", tags="label_2", n=3, seed=7, batch=2)
    for seed in (7, 8, 9):
        assert np.array_equal(png(again.out / f"seed{seed:04d}.png"), png(report.out / f"seed{seed:04d}.png"))
    # random noise is drawn per seed too, so batching does not change it either
    noisy = run_generate(
        colour_run, tmp_path / "c", tags="label_2", n=4, seed=1, noise_mode="random", batch=3
    )
    single = run_generate(colour_run, tmp_path / "d", tags="label_2", n=1, seed=4, noise_mode="random")
    assert np.array_equal(png(noisy.out / "seed0004.png"), png(single.out / "seed0004.png"))
    assert not np.array_equal(png(noisy.out / "seed0004.png"), png(report.out / "seed0004.png"))
    # the grid holds the images; params.json says how to make them again
    assert np.array_equal(tiles(report.files["grid"])[0][0], png(files[0]))
    params = json.loads((report.out / "params.json").read_text())
    snapshot = sorted(colour_run.glob("snapshot-*.pt"))[-1]
    assert params["snapshot"]["sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
    assert params["key"]["tags"] == ["label_2"] and params["key"]["n"] == 24 and params["images"] == 24
    assert params["command"][params["command"].index("--tags") + 1] == "label_2"
    older = run_generate(colour_run, tmp_path / "older", tags="label_2", n=1, seed=1, snapshot="3.024")
    assert older.snapshot.name == "snapshot-000003.024.pt"
    assert not np.array_equal(png(older.out / "seed0001.png"), png(report.out / "seed0001.png"))


def test_truncation_zero_gives_the_label_sets_own_mean_w_and_the_cutoff_spares_later_ws(colour_run, tmp_path):
    gen = load_generator(colour_run, device="cpu")
    centre = {k: next(gen.images(gen.center([k]).repeat(1, gen.num_ws, 1)))[0] for k in (0, 3)}
    for k in (0, 3):
        report = run_generate(colour_run, tmp_path / f"l{k}", tags=f"label_{k}", n=4, truncation=0)
        images = [png(f) for f in sorted(report.out.glob("seed*.png"))]
        assert all(np.array_equal(image, centre[k]) for image in images)
    assert not np.array_equal(centre[0], centre[3])  # a mean per label set, not one global mean
    assert nearest_colour(centre[0]) == 0 and nearest_colour(centre[3]) == 3
    w_avg = next(gen.images(gen.G.mapping.w_avg.repeat(1, gen.num_ws, 1)))[0]
    assert not np.array_equal(w_avg, centre[0])
    cut = run_generate(colour_run, tmp_path / "cut", tags="label_0", n=3, truncation=0, truncation_cutoff=2)
    ws = gen.ws(seed_z([0, 1, 2], gen.z_dim), [[0]] * 3)
    ws[:, :2] = gen.center([0])
    expected = next(gen.images(ws))
    for seed in range(3):
        assert np.array_equal(png(cut.out / f"seed{seed:04d}.png"), expected[seed])
    assert not np.array_equal(expected[0], expected[1])


def test_varied_tags_rows_follow_their_labels_and_default_to_the_datas_label_sets(colour_run, tmp_path):
    report = run_generate(colour_run, tmp_path / "rows", vary="tags", rows="label_3;label_0;label 2", n=6)
    grid = tiles(report.files["grid"])
    assert [len(row) for row in grid] == [6, 6, 6]
    hits = [
        nearest_colour(tile) == colour for row, colour in zip(grid, (3, 0, 2), strict=True) for tile in row
    ]
    assert np.mean(hits) >= 0.9, hits
    # one column is one z: its faces under other labels come from the same seed's images
    single = run_generate(colour_run, tmp_path / "one", tags="label_0", n=6)
    assert np.array_equal(grid[1][5], png(single.out / "seed0005.png"))
    drawn = run_generate(colour_run, tmp_path / "drawn", vary="tags", n=2)
    rows = json.loads(report.files["grid"].with_suffix(".json").read_text())["rows"]
    assert rows == [["label_3"], ["label_0"], ["label_2"]]
    drawn_rows = json.loads(drawn.files["grid"].with_suffix(".json").read_text())["rows"]
    assert sorted(drawn_rows) == [["label_0"], ["label_1"], ["label_2"], ["label_3"]]  # the data's sets


def test_style_mixing_takes_each_group_of_ws_from_b(colour_run, tmp_path):
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8)]
    text = ";".join(f"{a},{b}" for a, b in pairs)
    report = run_generate(colour_run, tmp_path / "mix", mix=text, tags="label_1")
    grid = tiles(report.files["mixing"])
    rows = json.loads(report.files["mixing"].with_suffix(".json").read_text())["rows"]
    assert [row[0] for row in rows] == ["A", "B", "A with B's coarse", "A with B's middle"]  # 16²: no fine
    gen = load_generator(colour_run, device="cpu")
    ws_a = gen.ws(seed_z([a for a, _ in pairs], gen.z_dim), [[1]] * 4, truncation=0.7)
    ws_b = gen.ws(seed_z([b for _, b in pairs], gen.z_dim), [[1]] * 4, truncation=0.7)
    mixed = ws_a.clone()
    mixed[:, :3] = ws_b[:, :3]  # coarse: the ws of the 4² and 8² convolutions
    assert all(
        np.array_equal(tile, image) for tile, image in zip(grid[2], next(gen.images(mixed)), strict=True)
    )

    def distance(row: int) -> float:
        pairs = zip(grid[row], grid[0], strict=True)
        return float(np.mean([np.abs(t.astype(float) - a.astype(float)).mean() for t, a in pairs]))

    assert 0 < distance(3) < distance(1)  # B's middle styles change A less than B differs from A


def test_interpolation_strip_and_gif_walk_from_seed_to_seed(colour_run, tmp_path):
    report = run_generate(
        colour_run, tmp_path / "walk", interpolate="1,5,9", steps=5, gif=True, tags="label_3"
    )
    strip = tiles(report.files["interpolation"])
    assert [len(row) for row in strip] == [5, 5]
    seeds = run_generate(colour_run, tmp_path / "seeds", tags="label_3", n=9, seed=1)
    for row, (a, b) in zip(strip, ((1, 5), (5, 9)), strict=True):
        assert np.array_equal(row[0], png(seeds.out / f"seed{a:04d}.png"))
        assert np.array_equal(row[-1], png(seeds.out / f"seed{b:04d}.png"))
        assert not np.array_equal(row[1], row[0]) and not np.array_equal(row[1], row[-1])
    with Image.open(report.files["gif"]) as gif:
        assert gif.n_frames == 2 * (5 - 1) + 1
    two = run_generate(colour_run, tmp_path / "two", interpolate="2,3", steps=6, gif=True, tags="label_0")
    with Image.open(two.files["gif"]) as gif:
        assert gif.n_frames == 6 and gif.info.get("loop") == 0


@pytest.fixture
def edit_run(colour_run, tmp_path) -> Path:
    """A copy of the colour run's newest snapshot with a random direction `smile` (and `glasses`)."""
    from train.directions import Directions, save_directions

    run = tmp_path / "edit-run"
    run.mkdir()
    snapshot = sorted(colour_run.glob("snapshot-*.pt"))[-1]
    shutil.copy(snapshot, run / snapshot.name)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    vectors /= vectors.norm(dim=1, keepdim=True)
    save_directions(run, Directions(["smile", "glasses"], vectors, torch.tensor([2.0, 2.0]), [0.9, 0.9]))
    return run


def test_an_edit_moves_every_image_and_its_strip_runs_through_the_unedited_face(edit_run, tmp_path):
    plain = run_generate(edit_run, tmp_path / "plain", tags="label_1", n=2, seed=4)
    edited = run_generate(edit_run, tmp_path / "edited", tags="label_1", n=2, seed=4, edit="smile=+1.5")
    strip = tiles(edited.files["edit smile"])[0]
    assert len(strip) == 5
    assert np.array_equal(strip[2], png(plain.out / "seed0004.png"))  # strength 0
    assert np.array_equal(strip[4], png(edited.out / "seed0004.png"))  # the edit as applied
    assert not np.array_equal(strip[4], strip[2])
    assert all(not np.array_equal(a, b) for a, b in pairwise(strip))
    assert not np.array_equal(png(edited.out / "seed0005.png"), png(plain.out / "seed0005.png"))
    with pytest.raises(InvalidArgument, match="nearest: smile"):
        run_generate(edit_run, tmp_path / "typo", edit="smille=1")


def test_the_command_line_spells_labels_either_way_and_names_the_nearest_on_a_miss(colour_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = [
        "generate",
        "--run",
        str(colour_run),
        "--tags",
        "label 2",
        "--n",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    done = runner.invoke(app, [*args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "3 images" in done.stdout and str(out / "grid.png") in done.stdout
    assert sorted(p.name for p in out.glob("seed*.png")) == ["seed0000.png", "seed0001.png", "seed0002.png"]
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    other = runner.invoke(app, [*args, "--out", str(out), "--seed", "5"])
    assert isinstance(other.exception, InvalidArgument) and "--force" in str(other.exception)
    assert not (out / "seed0005.png").exists()
    # params.json holds the command that makes the same images again
    command = json.loads((out / "params.json").read_text())["command"]
    assert command[:2] == ["curate", "generate"] and "--snapshot" in command
    remade = runner.invoke(app, [*command[1:], "--out", str(tmp_path / "remade"), "--device", "cpu", "-q"])
    assert remade.exit_code == 0, remade.output
    assert np.array_equal(png(tmp_path / "remade" / "seed0002.png"), png(out / "seed0002.png"))
    forced = runner.invoke(app, [*args, "--out", str(out), "--seed", "5", "--force"])
    assert forced.exit_code == 0 and (out / "seed0005.png").is_file() and not (out / "seed0000.png").exists()
    unknown = runner.invoke(
        app, ["generate", "--run", str(colour_run), "--tags", "label_9", "--device", "cpu"]
    )
    assert isinstance(unknown.exception, InvalidArgument)
    assert "unknown label 'label_9'" in str(unknown.exception) and "label_0" in str(unknown.exception)
    both = runner.invoke(app, ["generate", "--run", str(colour_run), "--mix", "1,2", "--interpolate", "1,2"])
    assert isinstance(both.exception, InvalidArgument) and "separate modes" in str(both.exception)


def test_an_unconditional_generator_refuses_labels_and_writes_under_the_run(tmp_path):
    from train.config import NetworkConfig
    from train.snapshot import save_snapshot

    network = NetworkConfig(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=32, channel_max=8)
    torch.manual_seed(0)
    G, _ = network.build()
    run = tmp_path / "uncond"
    state = {"trainer": {"G_ema": G.state_dict(), "step": 0}, "network": network.as_dict(), "label_names": []}
    save_snapshot(run / "snapshot-000000.016.pt", state)
    with pytest.raises(InvalidArgument, match="unconditional"):
        generate(GenerateOptions(run=run, tags="smile", device="cpu", progress=False))
    with pytest.raises(InvalidArgument, match="conditional run"):
        generate(GenerateOptions(run=run, vary="tags", device="cpu", progress=False))
    report = generate(GenerateOptions(run=run, n=3, device="cpu", progress=False))
    assert report.out.parent == run / "generated" and report.out.name.startswith(
        "images-000000.016-seed0-n3-"
    )
    assert len(list(report.out.glob("seed*.png"))) == 3 and not list(run.glob("generated/.*"))


def test_the_threaded_png_encoder_writes_files_that_decode_to_the_same_pixels(tmp_path):
    from train.pngwriter import PngWriter, png_bytes

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((16, 16), (3, 40), (1, 1))]
    images.append(np.zeros((8, 8, 3), np.uint8) + np.array([255, 0, 128], np.uint8))
    writer = PngWriter(threads=2, pending=2)
    for k, image in enumerate(images):
        writer.put(tmp_path / f"{k}.png", image)
    writer.close()
    for k, image in enumerate(images):
        assert np.array_equal(png(tmp_path / f"{k}.png"), image)
    with pytest.raises(ValueError, match="uint8 HWC RGB"):
        png_bytes(np.zeros((4, 4), np.uint8))


def test_the_stream_queues_the_next_batch_before_handing_back_this_one(colour_run):
    gen = load_generator(colour_run, None, "cpu")
    seeds = [[1, 2, 3], [4], [5, 6]]
    pulled: list[int] = []

    def batches():
        for k, chunk in enumerate(seeds):
            pulled.append(k)
            yield gen.ws(seed_z(chunk, gen.z_dim), [[2]] * len(chunk)), chunk

    stream = gen.stream(batches(), noise_mode="random")
    first = next(stream)
    assert pulled == [0, 1]  # batch 1 is on the device while the caller writes batch 0's files
    assert torch.is_grad_enabled()  # the stream's no_grad does not leak into the caller between batches
    streamed = [first, *stream]
    assert [len(b) for b in streamed] == [3, 1, 2] and pulled == [0, 1, 2]
    every = [s for chunk in seeds for s in chunk]
    ws = gen.ws(seed_z(every, gen.z_dim), [[2]] * len(every))
    (whole,) = gen.images(ws, noise_mode="random", batch=len(every), noise_seeds=every)
    # the same pixels as one batch of all six (on CUDA, up to one level: cuDNN picks by batch size)
    difference = np.abs(np.concatenate(streamed).astype(int) - whole.astype(int)).max()
    assert difference <= (1 if gen.device.type == "cuda" else 0)
    assert all(b.flags.c_contiguous and b.dtype == np.uint8 and b.shape[1:] == (16, 16, 3) for b in streamed)
    with pytest.raises(ValueError, match="2 ws but 1 noise seeds"):
        list(gen.stream([(ws[:2], [1])]))
