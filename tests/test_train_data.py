"""Training data: every layout read back pixel for pixel, bad sets refused with specific errors, and
an order and batches that are exact functions of (seed, step, round, rank) whichever path serves them."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate.errors import InvalidArgument
from curate.export.select import Sample
from curate.export.writers import parquet_schema, write_imagefolder, write_parquet, write_stylegan
from train.dataset import latest_export, open_dataset
from train.loader import ImageOrder, RealBatches, decoded_bytes, global_batch, round_start

VOCAB = ["1girl", "1boy", "smile"]
R = 8


def pixels(seed: int, side: int = R, mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (side, side) if mode == "L" else (side, side, len(mode))
    return rng.integers(0, 256, shape, dtype=np.uint8)


def png(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def chw(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def samples(count: int, validation: int = 0) -> list[tuple[Sample, bytes, np.ndarray]]:
    """Synthetic exported faces: (sample, its PNG, its pixels), train first as the export orders them."""
    out = []
    for i in range(count + validation):
        labels = [VOCAB[i % 2]] + (["smile"] if i % 3 == 0 else [])
        split = "train" if i < count else "validation"
        sample = Sample(
            f"face{i:03d}-0", f"md5{i}", f"crops/{i}.png", labels, {"1girl": 0.5}, 0.9, [], [], split
        )
        image = pixels(i)
        out.append((sample, png(image), image))
    return out


def vectors(rows) -> np.ndarray:
    return np.array([[1.0 if v in s.labels else 0.0 for v in VOCAB] for s, _, _ in rows], np.float32)


def record(out: Path, fmt: str, vocabulary: list[str], created: str = "2026-01-01T00:00:00+00:00") -> None:
    body = {"format": fmt, "labels": vocabulary, "counts": {"train": 1}, "created_at": created}
    (out / "export.json").write_text(json.dumps(body))


def assert_reads_back(ts, rows) -> None:
    train = [r for r in rows if r[0].split == "train"]
    assert len(ts) == ts.num_images == len(train) and ts.resolution == R
    for i, (_, _, image) in enumerate(train):
        got = ts.image(i)
        assert got.dtype == np.uint8 and got.shape == (3, R, R)
        np.testing.assert_array_equal(got, chw(image))


# ---- readers ---------------------------------------------------------------------------------------


def test_stylegan_export_folder_and_zip(tmp_path):
    rows = samples(5, validation=2)
    write_stylegan(tmp_path, [(s, b) for s, b, _ in rows], VOCAB)
    record(tmp_path, "stylegan", VOCAB)
    ts = open_dataset(tmp_path, progress=False)
    assert ts.format == "stylegan" and ts.path == tmp_path / "dataset.zip"
    assert ts.label_names == VOCAB and ts.label_dim == 3
    np.testing.assert_array_equal(ts.labels, vectors(rows[:5]))
    assert_reads_back(ts, rows)
    same = open_dataset(tmp_path / "dataset.zip", progress=False)  # the zip itself: names from beside it
    assert same.label_names == VOCAB and same.fingerprint == ts.fingerprint
    description = ts.describe()
    assert json.loads(json.dumps(description)) == description
    assert (
        description["count"] == 5 and description["resolution"] == R and description["label_names"] == VOCAB
    )
    assert len(description["fingerprint"]) == 64


def test_parquet_export_reads_lazily_and_names_come_from_the_schema(tmp_path):
    rows = samples(7, validation=3)
    write_parquet(tmp_path, [(s, b) for s, b, _ in rows], VOCAB, shard_bytes=600)  # several shards
    shards = sorted((tmp_path / "data").glob("train-*.parquet"))
    assert len(shards) > 1
    ts = open_dataset(tmp_path, progress=False)  # no export.json: the vocabulary is in the schema
    assert ts.format == "parquet" and ts.label_names == VOCAB
    np.testing.assert_array_equal(ts.labels, vectors(rows[:7]))
    assert_reads_back(ts, rows)
    # a process of its own (as a DataLoader worker): pickled without handles, opens them itself
    clone = pickle.loads(pickle.dumps(ts))
    np.testing.assert_array_equal(clone.image(6), chw(rows[6][2]))
    assert [i for block in ts.blocks() for i, _ in ts.images_in(block)] == list(range(7))


def test_parquet_split_column_and_row_groups(tmp_path):
    """Any folder of datasets-style Parquet: rows of split train only, read a row group at a time."""
    rows = samples(6, validation=0)
    full = parquet_schema(VOCAB)
    schema = pa.schema([full.field(n) for n in ("image", "label_vector", "split")], metadata=full.metadata)
    table = pa.Table.from_pylist(
        [
            {"image": {"bytes": b, "path": "x.png"}, "label_vector": [1.0, 0.0, 1.0], "split": split}
            for (_, b, _), split in zip(rows, ["train", "validation"] * 3, strict=True)
        ],
        schema=schema,
    )
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "part.parquet").num_row_groups == 3
    ts = open_dataset(tmp_path, progress=False)
    assert len(ts) == 3 and ts.name(1) == "part.parquet#2" and len(ts.blocks()) == 3
    for i, row in enumerate(rows[::2]):
        np.testing.assert_array_equal(ts.image(i), chw(row[2]))
    ts.source.cache_bytes = 1  # one row group kept at a time still reads every image right
    np.testing.assert_array_equal(ts.image(2), chw(rows[4][2]))
    np.testing.assert_array_equal(ts.image(0), chw(rows[0][2]))


def test_parquet_without_vocabulary_is_unconditional(tmp_path):
    rows = samples(3)
    write_parquet(tmp_path, [(s, b) for s, b, _ in rows], [])
    ts = open_dataset(tmp_path, progress=False)
    assert ts.label_dim == 0 and ts.labels.shape == (3, 0) and ts.label_names == []


def test_imagefolder_export(tmp_path):
    rows = samples(4, validation=1)
    write_imagefolder(tmp_path, [(s, b) for s, b, _ in rows], VOCAB)
    record(tmp_path, "imagefolder", VOCAB)
    ts = open_dataset(tmp_path, progress=False)
    assert ts.format == "imagefolder" and ts.label_names == VOCAB and ts.name(0) == "face000-0.png"
    np.testing.assert_array_equal(ts.labels, vectors(rows[:4]))
    assert_reads_back(ts, rows)


def test_nvlabs_zip_with_class_indices(tmp_path):
    path = tmp_path / "set.zip"
    images = {f"{k // 2:05d}/img{k:08d}.png": pixels(k) for k in (3, 0, 2, 1)}  # written out of order
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, image in images.items():
            archive.writestr(name, png(image))
        classes = [[name, k % 3] for k, name in enumerate(sorted(images))]
        archive.writestr("dataset.json", json.dumps({"labels": classes}))
        archive.writestr("notes.txt", "not an image")
    ts = open_dataset(path, progress=False)
    names = sorted(images)
    assert [ts.name(i) for i in range(4)] == names and ts.format == "stylegan"
    np.testing.assert_array_equal(ts.labels, np.eye(3, dtype=np.float32)[[0, 1, 2, 0]])
    assert ts.label_names == ["label_0", "label_1", "label_2"]
    for i, name in enumerate(names):
        np.testing.assert_array_equal(ts.image(i), chw(images[name]))


def test_plain_folder_of_png_and_jpeg(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(pixels(1)).save(tmp_path / "b" / "two.png")
    Image.fromarray(pixels(2)).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(pixels(3)).save(tmp_path / ".hidden" / "skip.png")
    (tmp_path / "readme.txt").write_text("x")
    ts = open_dataset(tmp_path, progress=False)
    assert ts.format == "folder" and [ts.name(0), ts.name(1)] == ["a.jpg", "b/two.png"]
    assert ts.label_dim == 0
    np.testing.assert_array_equal(ts.image(0), chw(np.asarray(Image.open(tmp_path / "a.jpg"))))
    np.testing.assert_array_equal(ts.image(1), chw(pixels(1)))
    meta = {"labels": [["a.jpg", [0.5, 1]], ["b/two.png", [1, 0]]]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    labelled = open_dataset(tmp_path, progress=False)
    np.testing.assert_array_equal(labelled.labels, [[0.5, 1.0], [1.0, 0.0]])
    assert labelled.label_names == ["label_0", "label_1"] and labelled.fingerprint != ts.fingerprint


def test_modes_become_rgb_with_alpha_on_white(tmp_path):
    rgba = pixels(4, mode="RGBA")
    grey = pixels(5, mode="L")
    wide = (pixels(6, mode="L").astype(np.uint16) * 257).astype(np.uint16)
    palette = Image.fromarray(pixels(7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = 0
    Image.fromarray(rgba).save(tmp_path / "1.png")
    Image.fromarray(grey).save(tmp_path / "2.png")
    Image.fromarray(wide).save(tmp_path / "3.png")
    palette.save(tmp_path / "4.png", transparency=0)
    turned = Image.fromarray(pixels(8))
    exif = turned.getexif()
    exif[0x0112] = 6  # shown turned 90° clockwise
    turned.save(tmp_path / "5.png", exif=exif.tobytes())
    ts = open_dataset(tmp_path, progress=False)
    flat = Image.new("RGB", (R, R), (255, 255, 255))  # curate export's flattening
    flat.paste(Image.fromarray(rgba), mask=Image.fromarray(rgba).getchannel("A"))
    np.testing.assert_array_equal(ts.image(0), chw(np.asarray(flat)))
    np.testing.assert_array_equal(ts.image(1), np.stack([grey] * 3))
    np.testing.assert_array_equal(ts.image(2), np.stack([pixels(6, mode="L")] * 3))  # 16 bits scaled
    shown = np.asarray(Image.open(tmp_path / "4.png").convert("RGBA"))
    expected = np.where(shown[:, :, 3:] == 0, 255, shown[:, :, :3]).astype(np.uint8)
    np.testing.assert_array_equal(ts.image(3), chw(expected))
    np.testing.assert_array_equal(ts.image(4), chw(np.rot90(pixels(8), k=-1)))


def test_a_real_export_and_latest_export(fixtures, tmp_path):
    from curate.export.select import SelectOptions
    from curate.export.stage import ExportOptions, export_dataset
    from tests.conftest import VOCABULARY, curated_workspace

    ws = curated_workspace(fixtures, tmp_path)
    with pytest.raises(InvalidArgument, match="run `curate export` first"):
        latest_export(ws.root)
    options = SelectOptions(validation=0.25)
    export_dataset(ws.root, ExportOptions("parquet", None, 32, options, False))
    report = export_dataset(ws.root, ExportOptions("stylegan", None, 32, options, False))
    assert latest_export(ws.root) == ws.export / "stylegan"
    ts = open_dataset(latest_export(ws.root), progress=False)
    assert ts.label_names == VOCABULARY and len(ts) == report.counts["train"] and ts.resolution == 32
    with zipfile.ZipFile(ws.export / "stylegan" / "dataset.zip") as archive:
        first = np.asarray(Image.open(io.BytesIO(archive.read("00000/img00000000.png"))))
    np.testing.assert_array_equal(ts.image(0), chw(first))
    from_parquet = open_dataset(ws.export / "parquet", progress=False)
    assert from_parquet.label_names == VOCABULARY and len(from_parquet) == len(ts)
    assert ts.describe()["export"]["created_at"]


# ---- bad sets ---------------------------------------------------------------------------------------


def folder_of(tmp_path: Path, files: dict[str, bytes], meta: dict | None = None) -> Path:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    if meta is not None:
        (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def labelled(*labels) -> dict:
    return {"labels": [[f"{k}.png", label] for k, label in enumerate(labels)]}


TWO = {"0.png": png(pixels(0)), "1.png": png(pixels(1))}
BAD_SETS = {
    "mixed sizes": (
        {"0.png": png(pixels(0)), "1.png": png(pixels(1)), "2.png": png(pixels(2, 16))},
        None,
        r"mixed sizes: 2\.png is 16×16 but 0\.png is 8×8",
    ),
    "non-square": ({"0.png": png(pixels(0)[:, :6])}, None, r"must be square, but they are 6×8"),
    "not a power of two": ({"0.png": png(pixels(0, 12))}, None, r"12×12.*power of two"),
    "too small": ({"0.png": png(pixels(0, 2))}, None, r"2×2.*at least 4"),
    "ragged labels": (
        TWO,
        labelled([1, 0], [1, 0, 1]),
        r"different lengths: 1\.png has 3 values, 0\.png has 2",
    ),
    "missing labels": (TWO, {"labels": [["0.png", [1.0]]]}, r"1 of 2 images have no label.*1\.png"),
    "non-numeric labels": (TWO, labelled([1, 0], ["a", 1]), r"label of 1\.png is \[\"a\", 1\]"),
    "mixed kinds": (TWO, labelled(1, [1, 0]), r"label of 0\.png is 1"),
    "negative class": (TWO, labelled(1, -1), r"1\.png has class index -1"),
    "no images": ({"notes.txt": b"hello"}, None, r"no images found \(looked for files ending \.png"),
    "undecodable": ({**TWO, "2.png": b"\x89PNG not really"}, None, r"1 image\(s\) do not open: 2\.png"),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_bad_sets_are_refused_with_a_specific_error(tmp_path, case):
    files, meta, message = BAD_SETS[case]
    with pytest.raises(InvalidArgument, match=message) as caught:
        open_dataset(folder_of(tmp_path, files, meta), progress=False)
    assert str(tmp_path) in str(caught.value)


def test_vocabulary_length_must_match(tmp_path):
    rows = samples(2)
    write_stylegan(tmp_path, [(s, b) for s, b, _ in rows], VOCAB)
    record(tmp_path, "stylegan", [*VOCAB, "extra"])
    with pytest.raises(InvalidArgument, match="labels have 3 values but the vocabulary names 4"):
        open_dataset(tmp_path, progress=False)


def test_missing_path_and_broken_body(tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    whole = png(pixels(9))
    folder = folder_of(tmp_path, {**TWO, "2.png": whole[: len(whole) // 2]})  # header fine, body cut
    ts = open_dataset(folder, progress=False)
    with pytest.raises(InvalidArgument, match=r"2\.png does not decode"):
        ts.image(2)
    order = ImageOrder(len(ts), seed=0)
    with pytest.raises(InvalidArgument, match=r"2\.png does not decode"):
        RealBatches(ts, order, "cpu", batch_gpu=2, cache="ram", workers=0, progress=False)
    streamed = RealBatches(ts, order, "cpu", batch_gpu=3, cache="none", workers=0)
    with pytest.raises(InvalidArgument, match=r"2\.png does not decode"):
        next(streamed)  # the first batch holds every image, the broken one too


# ---- order and batches ------------------------------------------------------------------------------


def test_image_order_is_exact_and_stateless():
    order = ImageOrder(10, mirror=True, seed=3)
    assert order.size == 20
    stream = order.take(0, 100)
    for start, count in [(0, 7), (13, 30), (19, 1), (40, 20), (55, 45)]:
        np.testing.assert_array_equal(order.take(start, count), stream[start : start + count])
    np.testing.assert_array_equal(ImageOrder(10, mirror=True, seed=3).take(55, 45), stream[55:])
    for epoch in range(5):
        assert sorted(stream[epoch * 20 : (epoch + 1) * 20].tolist()) == list(range(20))
    assert stream[:20].tolist() != stream[20:40].tolist()  # each epoch its own permutation
    assert ImageOrder(10, seed=3).take(0, 10).max() == 9 and sorted(
        ImageOrder(10, seed=4).take(0, 10)
    ) == list(range(10))
    images, flipped = order.images(np.array([3, 13]))
    assert images.tolist() == [3, 3] and flipped.tolist() == [False, True]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(order)).take(13, 30), stream[13:43])


def test_ranks_and_rounds_partition_each_global_batch():
    batch_gpu, rounds, world = 3, 2, 4
    width = global_batch(batch_gpu, rounds, world)
    assert width == 24
    for step in (0, 1, 7):
        starts = [
            round_start(step, a, rank, batch_gpu, rounds, world)
            for rank in range(world)
            for a in range(rounds)
        ]
        positions = sorted(p for start in starts for p in range(start, start + batch_gpu))
        assert positions == list(range(step * width, (step + 1) * width))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    rows = samples(7)
    write_stylegan(folder, [(s, b) for s, b, _ in rows], VOCAB)
    return open_dataset(folder, progress=False)


def run(batches: RealBatches, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (images.numpy().copy(), labels.numpy().copy())
        for images, labels in (next(batches) for _ in range(count))
    ]


def test_cached_and_streaming_batches_are_identical(small_set):
    order = ImageOrder(len(small_set), mirror=True, seed=5)
    layout = {"batch_gpu": 3, "rounds": 2, "rank": 1, "world_size": 2}
    cached = RealBatches(small_set, order, "cpu", **layout, cache="ram", workers=1, progress=False)
    assert cached.mode == "ram"
    streamed = RealBatches(small_set, order, "cpu", **layout, cache="none", workers=1, prefetch=2)
    assert streamed.mode == "none"
    with cached, streamed:
        a, b = run(cached, 12), run(streamed, 12)
        assert (cached.step, cached.round) == (6, 0)
    for (images_a, labels_a), (images_b, labels_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    # what each round holds: the order's images at this rank's positions, mirrored ones flipped
    for k, (images, labels) in enumerate(a):
        step, round_index = divmod(k, 2)
        virtual = order.take(round_start(step, round_index, 1, 3, 2, 2), 3)
        for row, v in enumerate(virtual.tolist()):
            image = small_set.image(v % 7)
            np.testing.assert_array_equal(images[row], image[:, :, ::-1] if v >= 7 else image)
            np.testing.assert_array_equal(labels[row], small_set.labels[v % 7])
    assert any(v >= 7 for v in order.take(0, 72))  # the mirrored half was exercised


def test_starting_at_a_step_equals_skipping_to_it(small_set):
    order = ImageOrder(len(small_set), mirror=False, seed=1)
    layout = {"batch_gpu": 4, "rounds": 3, "cache": "ram", "workers": 0, "progress": False}
    whole = run(RealBatches(small_set, order, "cpu", **layout), 5 * 3)
    resumed = RealBatches(small_set, order, "cpu", start_step=3, **layout)
    assert (resumed.step, resumed.round) == (3, 0)
    for (images_a, labels_a), (images_b, labels_b) in zip(whole[9:], run(resumed, 6), strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)
    streamed = RealBatches(small_set, order, "cpu", start_step=3, **{**layout, "cache": "none"})
    with streamed:
        for (images_a, _), (images_b, _) in zip(whole[9:], run(streamed, 6), strict=True):
            np.testing.assert_array_equal(images_a, images_b)


def test_cache_choice_and_labels_tensor(small_set):
    order = ImageOrder(len(small_set))
    need = decoded_bytes(small_set)
    assert need == 7 * 3 * R * R
    tight = RealBatches(small_set, order, "cpu", batch_gpu=2, cache_bytes=need - 1, workers=0, progress=False)
    roomy = RealBatches(small_set, order, "cpu", batch_gpu=2, cache_bytes=need, workers=0, progress=False)
    assert (tight.mode, roomy.mode) == ("none", "ram")
    labels = roomy.labels_tensor()
    assert labels.dtype == torch.float32 and labels.shape == (7, 3)
    np.testing.assert_array_equal(labels.numpy(), small_set.labels)
    with pytest.raises(InvalidArgument, match="needs a CUDA device"):
        RealBatches(small_set, order, "cpu", batch_gpu=2, cache="gpu")
    with pytest.raises(InvalidArgument, match="rank"):
        RealBatches(small_set, order, "cpu", batch_gpu=2, rank=2, world_size=2)
    tight.close()


def test_the_device_cache_path_gives_the_same_batches(small_set, monkeypatch):
    """The path a GPU cache takes (indices from the epoch's permutation on the device, index_select,
    flip where mirrored), run on the CPU here; test_cuda_batches_never_wait checks it on a GPU."""
    order = ImageOrder(len(small_set), mirror=True, seed=2)
    layout = {"batch_gpu": 5, "rounds": 1, "rank": 0, "world_size": 3, "workers": 0, "progress": False}
    ram = RealBatches(small_set, order, "cpu", cache="ram", **layout)
    monkeypatch.setattr(RealBatches, "_choose", lambda self, cache, budget: "gpu")
    device = RealBatches(small_set, order, "cpu", **layout)
    assert device.mode == "gpu"
    for (images_a, labels_a), (images_b, labels_b) in zip(run(ram, 8), run(device, 8), strict=True):
        np.testing.assert_array_equal(images_a, images_b)
        np.testing.assert_array_equal(labels_a, labels_b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_never_wait(small_set):
    order = ImageOrder(len(small_set), mirror=True, seed=4)
    layout = {"batch_gpu": 4, "rounds": 2, "workers": 1, "progress": False}
    served = {}
    for cache in ("gpu", "ram", "none"):
        batches = RealBatches(small_set, order, "cuda", cache=cache, **layout)
        assert batches.mode == cache
        if cache != "none":  # cached batches never make the host wait for the device
            torch.cuda.set_sync_debug_mode("error")
        try:
            got = [next(batches) for _ in range(10)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert all(images.is_cuda and labels.is_cuda for images, labels in got)
        served[cache] = [(images.cpu().numpy(), labels.cpu().numpy()) for images, labels in got]
        batches.close()
    for cache in ("ram", "none"):
        for (images_a, labels_a), (images_b, labels_b) in zip(served["gpu"], served[cache], strict=True):
            np.testing.assert_array_equal(images_a, images_b)
            np.testing.assert_array_equal(labels_a, labels_b)
    auto = RealBatches(small_set, order, "cuda", cache="auto", **layout)
    assert auto.mode == "gpu"  # a few kilobytes fit anywhere
