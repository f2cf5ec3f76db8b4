"""FID, KID and precision/recall: pytorch-fid's Inception with random weights in the real file format,
the formulas against hand computations, the registry, the reals' cache, `curate metrics`, `--metrics`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from curate import registry
from curate.errors import InvalidArgument, ModelError
from tests.gan import colour_set, random_inception, tiny_options


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    return random_inception(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def blocky_images(count: int, seed: int = 0) -> np.ndarray:
    """uint8 [count, 32, 32, 3] of 8×8-pixel blocks of random colour."""
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.integers(0, 256, (count, 4, 4, 3)), 8, 1), 8, 2).astype(np.uint8)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(inception_file):
    from train.fidelity import FeatureStats, fid_of
    from train.inception import load_inception

    network = load_inception(inception_file, "cpu")
    images = blocky_images(8)
    features = network(images)
    assert features.shape == (8, 2048) and features.std() > 0.01
    reals = FeatureStats(network.dim)
    reals.add(features)
    mean, cov = reals.mean_cov()
    assert abs(fid_of(features, mean, cov)) < 1e-3
    rng = np.random.default_rng(1)
    distances = []
    for strength in (10, 40, 120):
        noisy = np.clip(images + rng.normal(0, strength, images.shape), 0, 255).astype(np.uint8)
        distances.append(fid_of(network(noisy), mean, cov))
    assert 1e-2 < distances[0] < distances[1] < distances[2], distances


@pytest.mark.parametrize("rows", [12, 200])  # fewer rows than dimensions, and more
def test_fid_of_feature_rows_is_pytorch_fids_formula(rows):
    from pytorch_fid.fid_score import calculate_frechet_distance

    from train.fidelity import fid_of

    rng = np.random.default_rng(0)
    reals = rng.normal(size=(300, 64)) @ rng.normal(size=(64, 64)) / 8
    fakes = rng.normal(0.3, 1.1, size=(rows, 64))
    mean, cov = reals.mean(axis=0), np.cov(reals, rowvar=False)
    expected = calculate_frechet_distance(fakes.mean(axis=0), np.cov(fakes, rowvar=False), mean, cov)
    assert fid_of(fakes, mean, cov) == pytest.approx(expected, rel=1e-6)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
    from train.fidelity import kid

    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(6, 4)), rng.normal(0.5, 1.2, size=(6, 4))
    d, m = 4, 6

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    within_fake = sum(k(fake[i], fake[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_real = sum(k(real[i], real[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(fake[i], real[j]) for i in range(m) for j in range(m)) / (m * m)
    # subsets of all 6 rows are permutations, each giving the same unbiased estimate
    assert kid(real, fake, subsets=3) == pytest.approx(within_fake + within_real - 2 * across, rel=1e-12)


@pytest.mark.parametrize("batch", [7, 4096])  # blocks of the distance matrix, or one block
def test_precision_recall_of_a_subset_and_of_far_fakes(batch):
    from train.fidelity import precision_recall

    reals = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    subset = precision_recall(reals, reals[:15], nhood=3, batch=batch)
    assert subset[0] == 1.0 and 0 < subset[1] < 1  # every fake is a real; 15 fakes cover some reals
    assert precision_recall(reals, reals.copy(), batch=batch) == (1.0, 1.0)
    assert precision_recall(reals, reals + 100, batch=batch) == (0.0, 0.0)


def test_metric_names_say_the_count_and_typos_fail_listing_the_known_ones():
    from train.quality import MetricSpec, parse_metric, parse_metrics
    from train.runs import TrainOptions

    assert parse_metric("fid50k_full") == MetricSpec("fid", 50_000)
    assert parse_metric("pr50k3_full") == MetricSpec("pr", 50_000, 3)
    assert parse_metric("pr300_3_full").name == "pr300_3_full"
    specs = parse_metrics("fid50k_full,kid50k_full,pr50k3_full", n=5000)
    assert [key for s in specs for key in s.keys] == [
        "fid5k_full", "kid5k_full", "pr5k3_full_precision", "pr5k3_full_recall",
    ]  # fmt: skip
    assert [s.name for s in parse_metrics(["fid50k_full", "pr50k3_full"], n=300)] == [
        "fid300_full",
        "pr300_3_full",
    ]
    for wrong in ("fid50k", "is50k", "fid50k3_full", "pr50k_full"):
        with pytest.raises(InvalidArgument, match="fid50k_full"):
            parse_metric(wrong)
    with pytest.raises(InvalidArgument, match=r"unknown metric 'fid50_ful'.*kid50k_full, pr50k3_full"):
        TrainOptions(data=Path("x"), metrics=["fid50_ful"]).check()  # before any training starts


def test_the_registry_gives_the_weights_a_given_path_the_pinned_cache_or_a_clear_offline_error(
    inception_file, cache, monkeypatch
):
    from train import inception

    network = inception.load_inception(inception_file, "cpu")
    assert network.key == registry.sha256_of(inception_file)  # a user's own file is used as it is
    monkeypatch.setenv("CURATE_OFFLINE", "1")
    target = registry.cached_path(registry.INCEPTION_FID)
    with pytest.raises(ModelError) as caught:
        inception.inception_weights()
    assert str(target) in str(caught.value) and registry.INCEPTION_FID.url in str(caught.value)
    target.parent.mkdir(parents=True)
    shutil.copyfile(inception_file, target)
    with pytest.raises(ModelError, match="does not match the pinned sha256"):  # not the published file
        inception.inception_weights()
    pinned = dataclasses.replace(registry.INCEPTION_FID, sha256=network.key)
    monkeypatch.setattr(inception, "INCEPTION_FID", pinned)
    assert inception.inception_weights() == target


def test_reals_statistics_are_cached_per_dataset(inception_file, cache, colour_run, tmp_path):
    from train.dataset import open_dataset
    from train.inception import load_inception
    from train.inference import load_generator
    from train.quality import measure_generator

    dataset = open_dataset(colour_set(tmp_path / "data", count=6), progress=False)
    G = load_generator(colour_run, device="cpu").G
    network = load_inception(inception_file, "cpu")
    asked = ["fid4_full", "kid4_full", "pr4_3_full"]

    def measure():
        before = network.calls
        values = measure_generator(
            G, dataset, asked, "cpu", inception=inception_file, batch=8, progress=False
        )
        return values, network.calls - before

    first, calls_first = measure()
    assert set(first) == {"fid4_full", "kid4_full", "pr4_3_full_precision", "pr4_3_full_recall"}
    assert calls_first == 2  # one batch of 6 reals, one of 4 generated
    assert len(list((cache / "metrics").glob("*-stats6.npz"))) == 1
    assert len(list((cache / "metrics").glob("*-features6.npy"))) == 1
    again, calls_again = measure()
    assert calls_again == 1 and again == first  # the reals came from the cache; generation is seeded
    assert first["fid4_full"] > 0 and 0 <= first["pr4_3_full_precision"] <= 1


def test_curate_metrics_appends_a_line_to_the_runs_metrics(inception_file, cache, colour_run, tmp_path):
    from typer.testing import CliRunner

    from curate.cli import app
    from train.quality import training_data

    run = tmp_path / "run"
    shutil.copytree(colour_run, run)
    data = colour_set(tmp_path / "data", count=6)
    before = (run / "metrics.jsonl").read_text().splitlines()
    result = CliRunner().invoke(
        app,
        [
            "metrics", "--run", str(run), "--data", str(data), "--n", "6", "--batch", "8",
            "--metrics", "fid50k_full,kid50k_full,pr50k3_full", "--inception", str(inception_file),
            "--device", "cpu", "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[: len(before)] == before and len(lines) == len(before) + 1
    line = json.loads(lines[-1])
    newest = sorted(run.glob("snapshot-*.pt"))[-1]
    assert line["snapshot"] == newest.name and line["nimg"] == 6000 and line["kimg"] == 6
    assert line["source"] == "curate metrics" and line["n"] == 6 and line["data"] == str(data.resolve())
    assert "tick" not in line
    for key in ("fid6_full", "kid6_full", "pr6_3_full_precision", "pr6_3_full_recall"):
        assert isinstance(line[key], float) and key in result.output
    assert training_data(run, {}) == colour_run.parent / "data"  # the default --data: options.json's


class _MeanColours:
    """A cheap stand-in for Inception: each image's mean colour in a 2×2 grid (12 numbers)."""

    def __new__(cls, device):
        import torch

        from train.inception import FeatureNetwork

        pool = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        return FeatureNetwork(pool, torch.device(device), key="mean-colours", dim=12)


def test_train_measures_at_snapshot_ticks_only(cache, monkeypatch, tmp_path):
    from curate.summaries import train_summary
    from train import quality
    from train.stage import train_stylegan

    loaded = []
    monkeypatch.setattr(
        quality, "feature_network", lambda path, device: loaded.append(1) or _MeanColours(device)
    )
    data = colour_set(tmp_path / "data", count=16)
    options = tiny_options(data, tmp_path / "run", kimg=0.512, tick_kimg=0.128, snap_ticks=2)
    options.metrics, options.metrics_n = ["fid50k_full"], 32
    report = train_stylegan(options)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tick"] for r in records] == [1, 2, 3, 4]
    assert ["fid32_full" in r for r in records] == [False, True, False, True]
    assert records[-1]["fid32_full"] > 0 and report.measured == {"fid32_full": records[-1]["fid32_full"]}
    assert len(loaded) == 3  # checked before training, then at each snapshot
    assert f"measured at the last snapshot: fid32_full {records[-1]['fid32_full']:.4g}" in "\n".join(
        train_summary(report).lines
    )
