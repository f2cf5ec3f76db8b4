"""Shared fixtures: the real images in ../shared/fixtures, workspaces, no network beyond loopback."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping

# No model hub may be reached from tests; set before anything could import a hub client.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CURATE_OFFLINE", "1")

from pathlib import Path

import pytest

from curate.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("CURATE_FIXTURES", REPO.parent / "shared" / "fixtures"))
# ten illustrations the cascade finds faces in (eleven crops): a small set for stage tests
TEN_ILLUSTRATIONS = (
    "bizarre___samples_megumin.png",
    "dbregion__code_app2.jpg",
    "pundo__imgs_1.jpg",
    "pundo__imgs_3.jpg",
    "rp__imgs_dsample1.jpg",
    "rp__imgs_ptutorial5.png",
    "s2p__V1_images_test_11_.jpg",
    "s2p__V1_images_test_18_.jpg",
    "s2p__V1_images_test_22_.jpg",
    "s2p__V1_images_test_4_.jpg",
)
CORRUPT = {
    "danbooru__test_files_jpg_test-blank.jpg",
    "danbooru__test_files_png_empty.png",
    "danbooru__test_files_png_test-corrupt.png",
    "danbooru__test_files_webp_truncated.webp",
}


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The shared fixture folder; missing it skips outside CI and fails under CI."""
    if not (FIXTURES / "images" / "faces").is_dir():
        reason = f"fixtures not found at {FIXTURES.resolve()} (set CURATE_FIXTURES)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return FIXTURES.resolve()


@pytest.fixture(scope="session")
def face_images(fixtures: Path) -> list[Path]:
    return sorted((fixtures / "images" / "faces").iterdir())


@pytest.fixture(scope="session")
def noise_images(fixtures: Path) -> list[Path]:
    return sorted((fixtures / "images" / "noise").iterdir())


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory) -> Path:
    """A tiny conditional GAN trained for 6 kimg on four flat colours (about 30 s on two cores), shared
    by the tests of training, generation, metrics, directions and the report: treat it as read-only."""
    from tests.gan import colour_set, tiny_options
    from train.stage import train_stylegan

    root = tmp_path_factory.mktemp("colour-run")
    data = colour_set(root / "data")
    report = train_stylegan(tiny_options(data, root / "run", kimg=6, aug="ada", tick_kimg=1, snap_ticks=3))
    assert report.nimg >= 6000 and not report.interrupted
    return root / "run"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def booru(fixtures: Path):
    """A loopback Safebooru serving every fixture image as one post (ids 1000 and up)."""
    from tests.fakebooru import FakeBooru

    files = sorted((fixtures / "images" / "faces").iterdir()) + sorted(
        (fixtures / "images" / "noise").iterdir()
    )
    server = FakeBooru.from_images(files)
    server.tag_api_hidden = {"highres"}  # only the post-page sidebar knows this one
    with server:
        yield server


def options_for(booru, **overrides):
    """Crawl options aimed at the test server: no rate limit, quick retries, short timeouts."""
    from crawl.board import CrawlOptions
    from crawl.http import RetryPolicy

    settings = {
        "tags": "1girl",
        "limit": 1000,
        "base_url": booru.url,
        "rate": 0,
        "concurrency": 4,
        "retry": RetryPolicy(attempts=3, backoff=0.01, max_backoff=0.05),
        "timeout": (2.0, 2.0),
        **overrides,
    }
    return CrawlOptions(**settings)


def cascade_workspace(
    fixtures: Path, root: Path, names: Iterable[str], sidecars: Mapping[str, dict] | None = None
) -> Workspace:
    """A workspace of some face fixtures (with booru JSON sidecars if given), ingested and cascade-cropped."""
    from crawl.local import ingest_folder
    from detect.faces.crop import CropOptions, DetectorSpec, crop_images

    folder = root / "faces"
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(fixtures / "images" / "faces" / name, folder / name)
    for name, sidecar in (sidecars or {}).items():
        (folder / f"{name}.json").write_text(json.dumps(sidecar), encoding="utf-8")
    ws = Workspace.open(root / "ws")
    ingest_folder(folder, ws.root, progress=False)
    spec = DetectorSpec(model=fixtures / "models" / "lbpcascade_animeface.xml")
    crop_images(ws.root, CropOptions(detector=spec, progress=False, workers=1))
    return ws


VOCABULARY = ["1girl", "1boy", "smile"]


def curated_workspace(fixtures: Path, root: Path) -> Workspace:
    """Cascade crops of ten illustrations, tagged 1girl/1boy alternately (smile on every third), a
    filter that dropped the first two faces (the second as a duplicate of the fourth), and a vocabulary."""
    from curate.labels import Vocabulary
    from curate.manifest import CROP, FILTER, TAG, now_utc, read_stage, write_part

    ws = cascade_workspace(fixtures, root, TEN_ILLUSTRATIONS)
    crops = [r for r in read_stage(ws, CROP).to_pylist() if r["status"] == "ok"]
    stamp = now_utc()
    tags, filtered = [], []
    for n, row in enumerate(crops):
        labels = ["1girl" if n % 2 == 0 else "1boy"] + (["smile"] if n % 3 == 0 else []) + ["solo"]
        tags.append(
            {"face_id": row["face_id"], "image_id": row["image_id"], "status": "ok", "labels": labels,
             "scored_tags": labels, "scores": [0.9] * len(labels), "tagged_at": stamp}
        )  # fmt: skip
        error = {0: "low_score", 1: "duplicate"}.get(n)
        group = crops[3]["face_id"] if n in (1, 3) else None
        filtered.append(
            {"face_id": row["face_id"], "image_id": row["image_id"], "status": "skipped" if error else "ok",
             "error": error, "score": 0.5 + n / 100, "keep": error is None, "dup_group": group,
             "dup_of": group if n == 1 else None, "filtered_at": stamp}
        )  # fmt: skip
    write_part(ws, TAG, tags)
    write_part(ws, FILTER, filtered, {"threshold": 0.505})
    Vocabulary(VOCABULARY, {}, len(crops), {"how": "test"}).write(ws)
    return ws
