"""`curate train` as a library: it learns, resumes exactly after a kill, splits over processes, and stops
cleanly on NaN; parameter counts by --describe's function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curate.errors import InvalidArgument
from tests.conftest import REPO
from tests.gan import colour_scores, colour_set, tiny_options
from train.config import NetworkConfig
from train.runs import TrainOptions
from train.snapshot import is_resumable, list_snapshots, load_snapshot
from train.stage import describe, train_stylegan


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return colour_set(tmp_path_factory.mktemp("colours") / "data")


def generator_of(snapshot: Path, key: str = "G_ema"):
    state = load_snapshot(snapshot)
    G, _ = NetworkConfig(**state["network"]).build()
    G.load_state_dict(state["trainer"][key])
    return G.eval()


def assert_same(a, b, path: str = "") -> None:
    """Tensor for tensor, value for value (timestamps aside)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}/{index}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs by {(a.float() - b.float()).abs().max()}"
    else:
        assert a == b, path


@pytest.mark.parametrize(
    ("c_dim", "g_params", "d_params"), [(59, 25_059_810, 24_030_843), (0, 24_767_458, 24_001_089)]
)
def test_describe_gives_the_papers_parameter_counts_at_256(c_dim, g_params, d_params):
    figures = describe(TrainOptions(), resolution=256, c_dim=c_dim)
    assert (figures["G"], figures["D"]) == (g_params, d_params)
    assert figures["network"]["channel_base"] == 16384 and figures["network"]["channel_max"] == 512
    assert figures["G_mapping"] + figures["G_synthesis"] == g_params
    assert figures["hyperparameters"]["batch"] == 16  # NVlabs' auto on one GPU at 256²
    assert figures["hyperparameters"]["gamma"] == pytest.approx(0.0002 * 256**2 / 16)


def test_a_tiny_conditional_gan_learns_the_colour_its_label_asks_for(colour_run):
    """Two minutes at most on two cores: the images' colour moves to the data and follows the label."""
    snapshots = list_snapshots(colour_run)
    assert [p.name for p in snapshots] == ["snapshot-000003.024.pt", "snapshot-000006.pt"]
    torch.manual_seed(0)  # the run's seed: the same initial weights it started from
    untrained, _ = NetworkConfig(**load_snapshot(snapshots[-1])["network"]).build()
    before_distance, _ = colour_scores(untrained.eval())
    distance, accuracy = colour_scores(generator_of(snapshots[-1]))
    assert distance <= before_distance / 2, (before_distance, distance)
    assert accuracy >= 0.75, accuracy  # chance is 0.25
    for name in ("options.json", "metrics.jsonl", "reals.png", "fakes-init.png", "fakes-000006.png"):
        assert (colour_run / name).is_file(), name


def test_killed_and_resumed_equals_straight_tensor_for_tensor(colours, tmp_path):
    common = dict(kimg=0.512, tick_kimg=0.128, snap_ticks=1, aug="ada")
    straight = train_stylegan(tiny_options(colours, tmp_path / "straight", **common))
    # the same run in another process, killed with SIGKILL once its second snapshot exists
    run = tmp_path / "killed"
    script = (
        "from pathlib import Path; from tests.gan import tiny_options; "
        "from train.stage import train_stylegan; "
        f"train_stylegan(tiny_options(Path({str(colours)!r}), Path({str(run)!r}), "
        "kimg=100, tick_kimg=0.128, snap_ticks=1, aug='ada'))"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(list_snapshots(run)) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stopped_at = list_snapshots(run)
    assert len(stopped_at) >= 2, child.stderr.read().decode()[-2000:]
    resumed = train_stylegan(tiny_options(colours, run, **common))
    assert resumed.resumed_from is not None and 256 <= resumed.resumed_from < 512, resumed
    a, b = load_snapshot(straight.snapshot), load_snapshot(run / straight.snapshot.name)
    assert_same(a["trainer"], b["trainer"])
    assert a["rng"]["torch"].equal(b["rng"]["torch"])
    # only the newest two snapshots keep their optimisers; older ones keep the networks
    kept = [is_resumable(load_snapshot(p)) for p in list_snapshots(tmp_path / "straight")]
    assert kept == [False, False, True, True]
    # the metrics of the killed run's extra ticks were dropped: one line per tick, in order
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"tick": ')[1].split(",")[0]) for line in lines] == [1, 2, 3, 4]


def test_a_finished_run_does_nothing_and_other_options_are_refused(colours, tmp_path):
    options = tiny_options(colours, tmp_path / "run", kimg=0.128, tick_kimg=0.064)
    first = train_stylegan(options)
    again = train_stylegan(options)
    assert again.up_to_date and again.snapshot == first.snapshot and again.nimg == first.nimg
    with pytest.raises(InvalidArgument, match=r"--lr: None → 0\.01"):
        train_stylegan(tiny_options(colours, tmp_path / "run", kimg=0.256, lr=0.01))
    longer = train_stylegan(tiny_options(colours, tmp_path / "run", kimg=0.256, tick_kimg=0.064))
    assert longer.resumed_from == first.nimg and longer.nimg == 256
    # --force starts again, setting the old run's files aside rather than deleting them
    again = train_stylegan(tiny_options(colours, tmp_path / "run", kimg=0.064, tick_kimg=0.064, force=True))
    assert again.resumed_from is None and again.nimg == 64
    (aside,) = (tmp_path / "run").glob("replaced-*")
    assert [p.name for p in list_snapshots(aside)] == [first.snapshot.name, longer.snapshot.name] and (
        aside / "options.json"
    ).is_file()
    assert [p.name for p in list_snapshots(tmp_path / "run")] == ["snapshot-000000.064.pt"]


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_snapshot(colours, tmp_path, monkeypatch):
    from train.loop import Trainer
    from train.session import TrainingDiverged

    original = Trainer._g_main

    def poisoned(self):
        if self.step == 12:  # after the first tick's snapshot at step 8
            with torch.no_grad():
                self.G.synthesis.blocks[0].conv1.weight.fill_(float("nan"))
        original(self)

    monkeypatch.setattr(Trainer, "_g_main", poisoned)
    with pytest.raises(
        TrainingDiverged, match=r"NaN or infinite .* last good snapshot is .*snapshot-000000\.128\.pt"
    ):
        train_stylegan(tiny_options(colours, tmp_path / "run", kimg=1, tick_kimg=0.128, snap_ticks=1))
    assert [p.name for p in list_snapshots(tmp_path / "run")] == ["snapshot-000000.128.pt"]
    assert torch.isfinite(
        next(iter(load_snapshot(list_snapshots(tmp_path / "run")[0])["trainer"]["G"].values()))
    ).all()


@pytest.mark.skipif(
    bool(os.environ.get("CURATE_TEST_DEVICE")), reason="gloo on the CPU; one GPU cannot hold two NCCL ranks"
)
def test_two_gloo_processes_train_as_one_with_the_same_global_batch(colours, tmp_path):
    """Processes end with identical weights, equal within float tolerance to one process accumulating
    the same global batch in rounds; only the first process writes."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nimport torch\n"
        "from curate.device import pick_device\nfrom curate.distributed import join, leave\n"
        "from tests.gan import tiny_options\nfrom train.stage import prepare_session\n"
        "data, out, dump = map(Path, sys.argv[1:4])\n"
        "world, device = join(pick_device('cpu'))\n"
        "session = prepare_session(tiny_options(data, out, kimg=0.128, tick_kimg=0.064, snap_ticks=1, "
        "aug='ada'), world, device)\n"
        "session.run()\n"
        "t = session.trainer\n"
        "torch.save({'G': t.G.state_dict(), 'D': t.D.state_dict(), 'G_ema': t.G_ema.state_dict()}, "
        "dump / f'rank{world.rank}.pt')\n"
        "leave(world)\n",
        encoding="utf-8",
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(colours),
        str(tmp_path / "ddp"),
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    single = train_stylegan(
        tiny_options(
            colours, tmp_path / "single", kimg=0.128, tick_kimg=0.064, snap_ticks=1, aug="ada", batch_gpu=8
        )
    )
    reference = load_snapshot(single.snapshot)["trainer"]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for net in ("G", "D", "G_ema"):
        for key, value in ranks[0][net].items():
            assert torch.equal(value, ranks[1][net][key]), (net, key)
            assert torch.allclose(value, reference[net][key], atol=2e-4, rtol=1e-4), (net, key)
    written = load_snapshot(tmp_path / "ddp" / single.snapshot.name)
    assert written["trainer"]["step"] == 8 and sorted(p.name for p in list_snapshots(tmp_path / "ddp")) == [
        "snapshot-000000.064.pt",
        "snapshot-000000.128.pt",
    ]
