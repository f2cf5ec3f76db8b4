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

from curate.errors import InvalidArgument
from curate.run import plan
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


def test_a_run_goes_from_the_board_to_an_export(setup):
    output = finish(curate_run(write_config(setup, "whole")))
    stages = [line[2:] for line in output.splitlines() if line.startswith("▶ ")]
    assert stages == ["crawl", "crop", "tag", "labels", "embed", "filter", "export"]
    export = setup[0] / "whole" / "export"
    train = zip_contents(export / "stylegan" / "dataset.zip")
    labels = json.loads(train["dataset.json"])["labels"]
    assert len(labels) == len(train) - 1 > 20 and all(len(vector) == 4 for _, vector in labels)
    record = json.loads((export / "parquet" / "export.json").read_text())
    assert (
        record["counts"]["train"] == len(labels)
        and record["labels"] == json.loads((setup[0] / "whole" / "labels.json").read_text())["labels"]
    )
    again = finish(curate_run(write_config(setup, "whole")))  # everything is done: nothing changes
    assert "stylegan: unchanged" in again and "parquet: unchanged" in again


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
    done = subprocess.run(
        [sys.executable, "-m", "curate", "run", str(write_config(setup, "planned")), "--dry-run"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1. crawl" in done.stdout and "7. export" in done.stdout
