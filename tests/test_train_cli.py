"""`curate train` through the command line: describe, train and continue, Ctrl-C, --gpus, bad data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.gan import colour_set
from train.snapshot import list_snapshots, load_snapshot, snapshot_nimg

TINY = [
    "--cfg", "cpu", "--batch", "16", "--cbase", "256", "--cmax", "32", "--z-dim", "32", "--map", "2",
    "--aug", "ada", "--workers", "0", "--device", "cpu", "--quiet",
]  # fmt: skip


def curate(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "curate", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=env, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return colour_set(tmp_path_factory.mktemp("colours") / "data")


@pytest.mark.parametrize(
    ("cond_dim", "g_params", "d_params"), [(59, 25_059_810, 24_030_843), (0, 24_767_458, 24_001_089)]
)
def test_describe_prints_the_papers_counts_as_json(cond_dim, g_params, d_params):
    done = curate("train", "--describe", "--res", "256", "--cond-dim", str(cond_dim))
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["G"], figures["D"]) == (g_params, d_params)


def test_train_then_run_again_does_nothing_and_a_larger_kimg_goes_on(colours, tmp_path):
    run = tmp_path / "runs" / "run"  # where a workspace keeps its runs, for `curate status`
    common = ["train", "--data", str(colours), "--out", str(run), "--tick", "0.064", *TINY]
    first = curate(*common, "--kimg", "0.128")
    assert first.returncode == 0, first.stderr
    assert f"train {run}: kimg 0 → 0.128 of 0.128" in first.stdout and "4 labels" in first.stdout
    assert "s/kimg" in first.stdout and f"snapshot {run / 'snapshot-000000.128.pt'}" in first.stdout
    again = curate(*common, "--kimg", "0.128")
    assert again.returncode == 0 and "already trained to 0.128 kimg: nothing to do" in again.stdout
    longer = curate(*common, "--kimg", "0.192")
    assert longer.returncode == 0, longer.stderr
    assert "kimg 0.128 → 0.192" in longer.stdout and "resumed from 0.128 kimg" in longer.stdout
    options = json.loads((run / "options.json").read_text())
    assert options["label_names"] == ["label_0", "label_1", "label_2", "label_3"]
    status = curate("status", "-w", str(tmp_path))
    assert status.returncode == 0 and "runs  1" in status.stdout
    assert "run  kimg 0.192 of 0.192, 2 snapshots" in status.stdout
    assert options["network"]["c_dim"] == 4 and options["options"]["kimg"] == 0.192


def test_ctrl_c_writes_a_snapshot_and_exits_130(colours, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "curate", "train", "--data", str(colours), "--out", str(run)]
    command += ["--kimg", "1000", "--tick", "0.064", "--snap", "1000", *TINY]
    child = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and child.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:  # two ticks done, no snapshot yet
            break
        time.sleep(0.05)
    assert not list_snapshots(run)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "interrupted: what finished is saved" in stderr
    (snapshot,) = list_snapshots(run)
    state = load_snapshot(snapshot)
    assert snapshot_nimg(snapshot) == state["trainer"]["step"] * 16 >= 128
    assert f"snapshot {snapshot}" in stdout


def test_gpus_starts_torchrun_itself_and_only_the_first_process_writes(colours, tmp_path):
    run = tmp_path / "run"
    done = curate(
        "train",
        "--data",
        str(colours),
        "--out",
        str(run),
        "--kimg",
        "0.064",
        "--tick",
        "0.064",
        "--gpus",
        "2",
        *TINY,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"train {run}: kimg 0 → 0.064") == 1
    options = json.loads((run / "options.json").read_text())
    assert options["processes"] == 2 and options["batch_gpu"] == 8
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000000.064.pt"]


def make_png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([(16, 16), (32, 32)], "mixed sizes"),
        ([(16, 8)], "must be square"),
        ([(24, 24)], "power of two"),
        ([], "no images found"),
    ],
)
def test_bad_data_is_a_clear_error_before_anything_starts(tmp_path, sizes, message):
    data = tmp_path / "data"
    data.mkdir()
    for index, size in enumerate(sizes):
        make_png(data / f"{index}.png", size)
    run = tmp_path / "run"
    done = curate("train", "--data", str(data), "--out", str(run), *TINY)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error:" in done.stderr and message in " ".join(done.stderr.split()), done.stderr
    assert not run.exists()


def test_options_that_would_change_a_run_are_refused(colours, tmp_path):
    run = tmp_path / "run"
    first = curate(
        "train", "--data", str(colours), "--out", str(run), "--kimg", "0.032", "--tick", "0.032", *TINY
    )
    assert first.returncode == 0, first.stderr
    other = curate(
        "train", "--data", str(colours), "--out", str(run), "--kimg", "0.064", "--gamma", "5", *TINY
    )
    assert other.returncode == 2 and "--gamma: None → 5.0" in other.stderr and "--force" in other.stderr
