"""`curate run` end to end: a loopback Safebooru and the real fixtures through every stage to an export,
then the same run killed mid-way and started again gives the same export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate import run
from curate.cli import app
from curate.errors import InvalidArgument
from curate.run import Step, plan
from curate.summaries import Summary
from tests.conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("faiss")

CONFIG = """
workspace = "{workspace}"

[crawl]
queries = ["solo"]
limit = 1000
base_url = "{url}"
rate = 0
concurrency = 4
timeout = [5.0, 5.0]
[crawl.retry]
attempts = 3
backoff = 0.01

[crop.detector]
model = "{cascade}"

[tag]
model = "{tagger}"
device = "cpu"
workers = 0

[labels]
top = 4

[embed]
[embed.train]
backbone = "test_resnet"
dim = 16
size = 32
epochs = 2
batch_size = 8
device = "cpu"
workers = 0

[filter]
good_query = "portrait"

[export]
formats = ["stylegan", "parquet"]
resolution = 32
[export.select]
validation = 0.1
"""


@pytest.fixture(scope="module")
def setup(fixtures, tmp_path_factory):
    """A loopback board of every fixture (faces tagged portrait, noise scenery) and a tiny WD tagger."""
    from tests.fakebooru import FakeBooru
    from tests.taggers import make_model, save_wd_folder

    root = tmp_path_factory.mktemp("run")
    faces = sorted((fixtures / "images" / "faces").iterdir())
    noise = sorted((fixtures / "images" / "noise").iterdir())

    def tags_for(i: int, path: Path) -> list[str]:
        return ["solo", "portrait" if path in faces else "scenery", f"file_{i}"]

    tagger = save_wd_folder(make_model(), root / "tagger")
    with FakeBooru.from_images(faces + noise, tags_for=tags_for) as server:
        yield root, server.url, fixtures / "models" / "lbpcascade_animeface.xml", tagger


def write_config(setup, name: str) -> Path:
    root, url, cascade, tagger = setup
    path = root / f"{name}.toml"
    path.write_text(CONFIG.format(workspace=root / name, url=url, cascade=cascade, tagger=tagger))
    return path


def curate_run(config: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # one thread count for both runs: the same floats
    return subprocess.Popen(
        [sys.executable, "-m", "curate", "run", str(config), "--quiet"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def zip_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def said_by_stage(output: str) -> dict[str, list[str]]:
    """The lines `curate run` printed under each `▶ stage`."""
    said: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith("▶ "):
            said[line[2:]] = lines = []
        else:
            lines.append(line)
    return said


def command_says(*args: object) -> list[str]:
    """What a stage's own command prints (in this process: torch is loaded already)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_a_run_goes_from_the_board_to_an_export(setup):
    output = finish(curate_run(write_config(setup, "whole")))
    said = said_by_stage(output)
    assert list(said) == ["crawl", "crop", "tag", "labels", "embed", "filter", "export"]
    assert not any(repr_ in output for repr_ in ("Report(", "Counter(", "Options(", "Result("))
    # each stage says what its own command says: a headline, then rows by status
    assert said["crawl"][0].startswith("crawl 'solo': ") and "posts listed" in said["crawl"][0]
    assert said["crawl"][1].split()[:1] == ["ok"] and " MB in " in said["crawl"][-2]
    assert said["crawl"][-1] == "  the board has no more posts for this query"
    assert said["crop"][0].startswith("crop (cascade): ") and "faces cropped" in said["crop"][0]
    assert said["tag"][0].startswith("tag: ") and said["tag"][-2].startswith("  most given: ")
    assert said["labels"][0].startswith("4 labels over ") and said["labels"][1].startswith("written to ")
    assert said["embed"][0].startswith("embed-train epochs 0 → 2 (")
    assert said["embed"][1].startswith("embed (instdisc:test_resnet): ")
    assert said["filter"][0].startswith("filter: ") and "faces kept; seeds " in said["filter"][0]
    exported = [line for line in said["export"] if line.startswith("export: ")]
    assert [line.rsplit("/", 1)[-1] for line in exported] == ["stylegan", "parquet"]
    export = setup[0] / "whole" / "export"
    train = zip_contents(export / "stylegan" / "dataset.zip")
    labels = json.loads(train["dataset.json"])["labels"]
    assert len(labels) == len(train) - 1 > 20 and all(len(vector) == 4 for _, vector in labels)
    record = json.loads((export / "parquet" / "export.json").read_text())
    assert (
        record["counts"]["train"] == len(labels)
        and record["labels"] == json.loads((setup[0] / "whole" / "labels.json").read_text())["labels"]
    )
    again = said_by_stage(finish(curate_run(write_config(setup, "whole"))))  # all done: nothing changes
    root, url, cascade, tagger = setup
    ws = root / "whole"
    crawl = ["--tags", "solo", "--limit", 1000, "--base-url", url, "--rate", 0, "-w", ws, "--quiet"]
    assert again["crawl"] == command_says("crawl", *crawl)
    assert again["crawl"][0] == f"crawl of 'solo' is already complete in {ws}: nothing to do."
    assert again["crop"] == command_says("crop", "-w", ws, "--model", cascade, "--quiet")
    tag = ["-w", ws, "--model", tagger, "--device", "cpu", "--workers", 0, "--quiet"]
    assert again["tag"] == command_says("tag", *tag)
    export = ["-w", ws, "--resolution", 32, "--validation", 0.1, "--quiet"]
    assert again["export"] == [
        *command_says("export", *export, "--format", "stylegan"),
        *command_says("export", *export, "--format", "parquet"),
    ]
    assert all("is already this export" in line for line in again["export"])


def test_a_killed_run_started_again_gives_the_same_export(setup):
    whole = setup[0] / "whole" / "export" / "stylegan" / "dataset.zip"
    if not whole.is_file():
        finish(curate_run(write_config(setup, "whole")))
    config = write_config(setup, "killed")
    process = curate_run(config, start_new_session=True)
    crops = setup[0] / "killed" / "manifests" / "crop"
    deadline = time.monotonic() + 300
    while not (crops.is_dir() and any(crops.glob("part-*.parquet"))):  # kill it inside the crop stage
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (setup[0] / "killed" / "export").exists()
    output = finish(curate_run(config))
    assert "▶ export" in output
    assert zip_contents(setup[0] / "killed" / "export" / "stylegan" / "dataset.zip") == zip_contents(whole)


def test_the_plan_checks_every_table_first(setup, tmp_path):
    workspace, steps = plan(write_config(setup, "planned"))
    assert workspace == setup[0] / "planned"
    assert [s.stage for s in steps] == ["crawl", "crop", "tag", "labels", "embed", "filter", "export"]
    assert not workspace.exists()  # planning runs nothing
    bad = tmp_path / "bad.toml"
    bad.write_text('workspace = "w"\n[embed.train]\nepoch = 3\n')
    with pytest.raises(InvalidArgument, match=r"\[embed.train\]: unknown key epoch; known: .*epochs"):
        plan(bad)
    bad.write_text('workspace = "w"\n[polish]\n')
    with pytest.raises(InvalidArgument, match="unknown stage polish"):
        plan(bad)
    bad.write_text("workspace = \n")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        plan(bad)


def test_the_dry_run_prints_each_stage_with_the_options_that_differ_from_the_defaults(setup):
    config = write_config(setup, "dry")
    text = config.read_text().replace(
        "timeout = [5.0, 5.0]\n",  # a secret, and options at their defaults
        'timeout = [5.0, 5.0]\napi_key = "s3cret-key"\nuser_id = "u-4242"\nsize = "original"\n',
    )
    config.write_text(text.replace('good_query = "portrait"\n', 'good_query = "portrait"\nk = 10\n'))
    done = subprocess.run(
        [sys.executable, "-m", "curate", "run", str(config), "--dry-run"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    root, url, cascade, tagger = setup
    assert done.stdout.splitlines() == [
        f"workspace {root / 'dry'}",
        f'1. crawl: tags="solo", limit=1000, base_url="{url}", rate=0, concurrency=4, timeout=[5.0, 5.0], '
        "retry.attempts=3, retry.backoff=0.01",
        f'2. crop: detector.model="{cascade}"',
        f'3. tag: model="{tagger}", device="cpu", workers=0',
        "4. labels: top=4",
        '5. embed: train.backbone="test_resnet", train.dim=16, train.size=32, train.epochs=2, '
        'train.batch_size=8, train.device="cpu", train.workers=0',
        '6. filter: good_query="portrait"',
        "7. export:",
        '   - format="stylegan", resolution=32, select.validation=0.1',
        '   - format="parquet", resolution=32, select.validation=0.1',
    ]
    assert not (root / "dry").exists()


def test_a_stage_stopped_by_ctrl_c_stops_the_run_as_its_command_would(tmp_path, monkeypatch):
    ran = []

    def stopped(table: dict, progress: bool) -> Step:
        return Step("labels", table, lambda ws: Summary(["[bold]labels[/bold] half done"], interrupted=True))

    def after(table: dict, progress: bool) -> Step:
        return Step("export", table, lambda ws: ran.append("export") or Summary())

    monkeypatch.setitem(run.BUILDERS, "labels", stopped)
    monkeypatch.setitem(run.BUILDERS, "export", after)
    config = tmp_path / "stop.toml"
    config.write_text('workspace = "w"\n[labels]\n[export]\n')
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 130 and not ran
    assert result.stdout.splitlines() == ["▶ labels", "labels half done"]
    assert "interrupted: what finished is saved" in result.stderr


def test_a_train_table_trains_on_the_workspaces_latest_export(fixtures, tmp_path):
    """export → train in one config: the run lands in WORKSPACE/runs/, conditional on the vocabulary."""
    from tests.conftest import VOCABULARY, curated_workspace

    ws = curated_workspace(fixtures, tmp_path)
    config = tmp_path / "train.toml"
    config.write_text(
        f'workspace = "{ws.root}"\n\n[export]\nformat = "stylegan"\nresolution = 16\n'
        "[export.select]\nvalidation = 0\n\n"
        '[train]\ncfg = "cpu"\nkimg = 0.032\ntick_kimg = 0.032\nbatch = 8\nchannel_base = 256\n'
        'channel_max = 32\nz_dim = 32\nmapping_layers = 2\nworkers = 0\ndevice = "cpu"\n',
        encoding="utf-8",
    )
    said: list[str] = []
    run.run_config(config, progress=False, say=said.append)
    (folder,) = (ws.root / "runs").iterdir()
    assert folder.name == "stylegan-cpu-16-cond3"
    assert any(line.startswith(f"[bold]train[/bold] {folder}: kimg 0 → 0.032") for line in said), said
    options = json.loads((folder / "options.json").read_text())
    assert options["label_names"] == VOCABULARY and options["dataset"]["format"] == "stylegan"
    said.clear()
    run.run_config(config, progress=False, say=said.append)
    assert any("already trained to 0.032 kimg: nothing to do" in line for line in said), said
