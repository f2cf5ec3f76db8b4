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
    missing = curate("select", "--preset", "nope")
    assert missing.returncode == 2 and "no label preset 'nope' (available: hambir59)" in missing.stderr
    # no part names a tagger here: the preset's labels that no face carries are left out, with a warning
    preset = curate("select", "--preset", "hambir59")
    assert preset.returncode == 0, preset.stderr
    assert "4 labels over 5 faces: pink_hair: 1, blue_eyes: 2, smile: 2, blunt_bangs: 2" in preset.stdout
    assert "warning: left out 55 listed labels that no face carries and no tagger knows" in preset.stderr
    assert "--tagger FOLDER" in preset.stderr and "twintails, " in preset.stderr


# the preset by today's names, as read_list_text gives them: three renamed, and `bangs`, which has no
# current name; a WD v3 vocabulary has the other 58
HAMBIR59 = [
    line.split("#")[0].strip().replace(" ", "_")
    for line in """
pink hair,blush,open mouth,hair ornament,short hair,looking at viewer,flower,aqua eyes,long hair,
blue eyes,collarbone,school uniform,green eyes,braid,hairclip,red eyes,blue hair,ribbon,bow,hair ribbon,
pink eyes,grey hair,white hair,red hair,twintails,black hair,tears,hair flower,smile,blonde hair,choker,
bare shoulders,gloves,hair bow,brown hair,brown eyes,yellow eyes,orange hair,animal ears,jewelry,
cleavage,bangs,pointy ears,earrings,purple eyes,purple hair,hairband,green hair,hat,cat ears,:d,glasses,
fang,lips,necktie,black eyes,ponytail,tongue,blunt bangs""".replace("\n", "").split(",")
]


def test_the_hambir59_preset_ships_with_its_source_and_reads_by_current_names():
    from importlib import resources

    from curate.labels import preset

    text = resources.files("curate.presets").joinpath("hambir59.txt").read_text("utf-8")
    assert text.startswith("# The 59 labels of Hambir et al., 'Facial Image Generation of Anime characters'")
    assert len(HAMBIR59) == 59 and preset("hambir59") == HAMBIR59
    for old, new in (("twin tails", "twintails"), ("silver hair", "grey_hair"), ("hair clip", "hairclip")):
        assert old in text and read_list_text(old) == [new]
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert '"curate.presets" = ["*.txt"' in pyproject  # the package data: the presets are in the wheel


@pytest.fixture
def wd_tagger(tmp_path):
    """A tiny WD tagger folder whose selected_tags.csv has today's names of the preset, less `bangs`."""
    pytest.importorskip("timm")
    from tests.taggers import make_model, save_wd_folder

    tags = [(r, 9, 0.0) for r in ("general", "sensitive", "questionable", "explicit")]
    tags += [(t, 0, 0.0) for t in ["1girl", *HAMBIR59] if t != "bangs"]
    return save_wd_folder(make_model(tags=tags), tmp_path / "wd-tagger", tags=tags)


def tagged_by(ws: Workspace, model: str, carried: list[str]) -> Workspace:
    """Three faces carrying `carried` between them, tagged by `model` (the part metadata names it)."""
    rows = [face(k, ["1girl", *carried[k::3]]) for k in range(3)]
    write_part(ws, TAG, rows, params={"model": model})
    return ws


def test_listed_labels_no_face_carries_and_no_tagger_knows_are_left_out(wd_tagger, tmp_path):
    known = [t for t in HAMBIR59 if t != "bangs"]
    ws = tagged_by(Workspace.open(tmp_path / "ws"), str(wd_tagger), known)
    vocabulary, _ = choose_labels(ws.root, preset_name="hambir59")
    assert vocabulary.labels == known and vocabulary.how["unknown"] == ["bangs"]
    assert vocabulary.how["renamed"] == {
        "hair_clip": "hairclip",
        "silver_hair": "grey_hair",
        "twin_tails": "twintails",
    }
    assert vocabulary.how["vocabularies"] == {str(wd_tagger): str(wd_tagger / "selected_tags.csv")}
    (warning,) = vocabulary.warnings()
    assert "left out 1 listed labels that no face carries and no tagger knows" in warning
    assert str(wd_tagger / "selected_tags.csv") in warning and warning.endswith(": bangs")
    assert read_vocabulary(ws).warnings() == [warning]  # labels.json keeps what was left out

    # a list in old names: misspelt and retired names are left out; a name the tagger knows but no face
    # carries is still the --min-count error, and so is one on too few faces
    listing = tmp_path / "labels.txt"
    listing.write_text("twin tails, silver hair\nhair clip\nbangs\nblue eyse\n")
    vocabulary, _ = choose_labels(ws.root, list_file=listing)
    assert vocabulary.labels == ["twintails", "grey_hair", "hairclip"]
    assert vocabulary.how["unknown"] == ["bangs", "blue_eyse"] and vocabulary.counts["twintails"] == 1
    listing.write_text("twin tails\nbangs\ncat ears\n")
    other = tagged_by(Workspace.open(tmp_path / "other"), str(wd_tagger), ["twintails", "blush"])
    with pytest.raises(
        InvalidArgument, match=r"1 listed tags are on fewer than 1 of 3 faces: cat_ears \(0\)$"
    ):
        choose_labels(other.root, list_file=listing)
    with pytest.raises(InvalidArgument, match=r"fewer than 2 of 3 faces: twintails \(1\), cat_ears \(0\)$"):
        choose_labels(other.root, list_file=listing, min_count=2)
    # the tagger named explicitly (the manifest's model moved, or was tagged elsewhere)
    moved = tagged_by(Workspace.open(tmp_path / "moved"), str(tmp_path / "gone"), ["twintails", "cat_ears"])
    vocabulary, _ = choose_labels(moved.root, list_file=listing, tagger=wd_tagger)
    assert vocabulary.labels == ["twintails", "cat_ears"] and vocabulary.how["unknown"] == ["bangs"]
    with pytest.raises(InvalidArgument, match=r"no selected_tags\.csv there"):
        choose_labels(moved.root, list_file=listing, tagger=tmp_path)
    # --top chooses among tags faces carry: nothing to leave out
    assert "unknown" not in choose_labels(ws.root, top=5)[0].how


def test_the_vocabulary_of_a_hub_tagger_comes_from_the_cache_only(wd_tagger, tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_CACHE", str(tmp_path / "cache"))
    listing = tmp_path / "labels.txt"
    listing.write_text("twintails\ncat ears\nbangs\n")
    ws = tagged_by(Workspace.open(tmp_path / "ws"), "SmilingWolf/wd-vit-tagger-v3", ["twintails"])
    # not in the cache (and the network is never asked): nothing to check against, said so
    vocabulary, _ = choose_labels(ws.root, list_file=listing)
    assert vocabulary.labels == ["twintails"] and vocabulary.how["unknown"] == ["cat_ears", "bangs"]
    assert vocabulary.how["vocabularies"] == {"SmilingWolf/wd-vit-tagger-v3": None}
    assert "no tagger vocabulary was found to look in; --tagger FOLDER names one" in vocabulary.warnings()[0]
    # in the hub cache's layout, as snapshot_download leaves it
    repo = tmp_path / "cache" / "hub" / "models--SmilingWolf--wd-vit-tagger-v3"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "selected_tags.csv").write_bytes(
        (wd_tagger / "selected_tags.csv").read_bytes()
    )
    with pytest.raises(InvalidArgument, match=r"cat_ears \(0\)"):  # known now: the --min-count error
        choose_labels(ws.root, list_file=listing)


def test_cli_warns_of_labels_left_out(wd_tagger, tmp_path):
    ws = tagged_by(Workspace.open(tmp_path / "ws"), "nowhere/tagger", ["twintails", "grey_hair"])
    listing = tmp_path / "labels.txt"
    listing.write_text("twin tails\nsilver hair\nbangs\n")
    command = [
        sys.executable, "-m", "curate", "labels", "select", "-w", str(ws.root), "--list", str(listing),
        "--tagger", str(wd_tagger),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "2 labels over 3 faces: twintails: 1, grey_hair: 1" in done.stdout
    assert done.stderr.startswith("warning: left out 1 listed labels") and done.stderr.rstrip().endswith(
        ": bangs"
    )
