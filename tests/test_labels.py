"""Tag counts, the bar chart, and choosing the label vocabulary (top N, a list, presets, exclusions)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from curate.errors import InvalidArgument
from curate.labels import (
    choose_labels,
    count_tags,
    label_stats,
    read_list_text,
    read_vocabulary,
    select_labels,
)
from curate.manifest import TAG, now_utc, write_part
from curate.workspace import Workspace
from tests.conftest import REPO


def face(k: int, tagger=(), booru=(), character=(), booru_character=(), status="ok") -> dict:
    return {
        "face_id": f"img{k}-0",
        "image_id": f"img{k}",
        "status": status,
        "tags_general": list(tagger),
        "tags_character": list(character),
        "booru_general": list(booru),
        "booru_character": list(booru_character),
        "tagged_at": now_utc(),
    }


@pytest.fixture
def tagged(tmp_path) -> Workspace:
    """Five tagged faces (and a failed one) whose tags are spelt both ways."""
    ws = Workspace.open(tmp_path / "ws")
    rows = [
        face(0, ["1girl", "blue_eyes", "smile"], ["blue eyes"], ["saber"]),
        face(1, ["1girl", "blue_eyes"], [], [], ["Saber"]),
        face(2, ["1girl", "pink_hair"], ["pink hair", "blunt_bangs"]),
        face(3, ["1girl"], ["smile"]),
        face(4, [], ["1boy", "blunt bangs"]),
        face(5, ["1girl"], status="failed"),
    ]
    write_part(ws, TAG, rows)
    return ws


def test_counts_by_source_are_per_face_and_canonical(tagged):
    both = count_tags(tagged)
    assert both.faces == 5
    assert both.general == {
        "1girl": 4,
        "blue_eyes": 2,
        "smile": 2,
        "pink_hair": 1,
        "blunt_bangs": 2,
        "1boy": 1,
    }
    assert both.character == {"saber": 2}
    assert count_tags(tagged, "tagger").general == {"1girl": 4, "blue_eyes": 2, "smile": 1, "pink_hair": 1}
    booru = count_tags(tagged, "booru")
    assert booru.general == {"blue_eyes": 1, "pink_hair": 1, "blunt_bangs": 2, "smile": 1, "1boy": 1}
    assert booru.character == {"saber": 1}
    with pytest.raises(InvalidArgument, match="--source"):
        count_tags(tagged, "wiki")


def test_top_n_with_min_count_exclusions_and_ties(tagged):
    counts = count_tags(tagged)
    assert select_labels(counts, top=3).labels == ["1girl", "blue_eyes", "blunt_bangs"]  # ties by name
    assert select_labels(counts, top=10, min_count=2).labels == ["1girl", "blue_eyes", "blunt_bangs", "smile"]
    chosen = select_labels(counts, top=2, exclude=["1girl", "blue eyes"])
    assert chosen.labels == ["blunt_bangs", "smile"] and chosen.counts == {"blunt_bangs": 2, "smile": 2}
    assert select_labels(counts, top=5, category="character").labels == ["saber"]
    assert select_labels(counts, top=2, category="any").labels == ["1girl", "blue_eyes"]
    with pytest.raises(InvalidArgument, match="no tag is left"):
        select_labels(counts, top=3, min_count=5)


def test_a_list_keeps_its_order_and_spellings_meet(tagged):
    counts = count_tags(tagged)
    wanted = read_list_text("pink hair, blunt bangs  # hair\nSaber\n\nblue_eyes,pink_hair\n")
    assert wanted == ["pink_hair", "blunt_bangs", "saber", "blue_eyes"]
    chosen = select_labels(counts, wanted=wanted)
    assert chosen.labels == wanted and chosen.counts["saber"] == 2
    with pytest.raises(InvalidArgument, match=r"on fewer than 1 of 5 faces: green_hair \(0\)"):
        select_labels(counts, wanted=["green hair", "smile"])
    with pytest.raises(InvalidArgument, match="exactly one"):
        select_labels(counts, top=2, wanted=["smile"])


def test_choose_writes_the_vocabulary_and_presets_are_named(tagged, tmp_path):
    listing = tmp_path / "labels.txt"
    listing.write_text("smile\nblue eyes\n")
    vocabulary, path = choose_labels(tagged.root, list_file=listing)
    assert path == tagged.root / "labels.json"
    again = read_vocabulary(tagged)
    assert again.labels == ["smile", "blue_eyes"] == vocabulary.labels
    assert again.how["list"] == str(listing) and again.faces == 5
    assert json.loads(path.read_text())["counts"] == {"smile": 2, "blue_eyes": 2}
    with pytest.raises(InvalidArgument, match="no label preset 'nope'"):
        choose_labels(tagged.root, preset_name="nope")
    with pytest.raises(InvalidArgument, match="exactly one"):
        choose_labels(tagged.root, top=2, preset_name="nope")
    with pytest.raises(InvalidArgument, match="curate labels select"):
        read_vocabulary(Workspace.open(tmp_path / "other"))


def test_stats_chart_bars_follow_the_counts(tagged):
    counts, ranked, chart = label_stats(tagged.root, top=3)
    assert counts.faces == 5 and ranked == [("1girl", 4), ("blue_eyes", 2), ("blunt_bangs", 2)]
    pixels = np.asarray(Image.open(chart).convert("RGB"))
    bar = np.all(pixels == (70, 110, 190), axis=2)
    rows = [r for r in range(pixels.shape[0]) if bar[r].any()]
    widths = sorted({int(bar[r].sum()) for r in rows}, reverse=True)
    assert len(widths) == 2 and widths[0] == pytest.approx(2 * widths[1], abs=2)  # 4 faces vs 2


def test_no_tagged_faces_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidArgument, match="curate tag"):
        count_tags(Workspace.open(tmp_path / "ws"))


def test_cli_stats_and_select(tagged):
    def curate(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "curate", "labels", *args, "-w", str(tagged.root)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)

    stats = curate("stats", "--top", "2")
    assert stats.returncode == 0, stats.stderr
    assert "on 5 tagged faces" in stats.stdout
    assert [line.split()[:2] for line in stats.stdout.splitlines()[1:3]] == [
        ["1girl", "4"],
        ["blue_eyes", "2"],
    ]
    chosen = curate("select", "--top", "2", "--exclude", "1girl,smile")
    assert chosen.returncode == 0, chosen.stderr
    assert "2 labels over 5 faces: blue_eyes: 2, blunt_bangs: 2" in chosen.stdout
    assert read_vocabulary(tagged).labels == ["blue_eyes", "blunt_bangs"]
    missing = curate("select", "--preset", "hambir59")
    assert missing.returncode == 2 and "no label preset 'hambir59'" in missing.stderr
