"""The filter on the real fixture mix: an embedding trained here, 20 seeds, and real copies to find.

One instance-discrimination run (resnet18 at 64 px, 30 epochs: about a minute on 2 cores) serves
every test in this module.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

import numpy as np

from curate.manifest import FILTER, read_stage
from curate.metrics import roc_auc
from embed.filter import FilterOptions, filter_faces
from embed.train import EmbedTrainOptions
from tests.mixes import Mix, embedded_mix

TRAINING = EmbedTrainOptions(
    backbone="resnet18", dim=32, size=64, epochs=30, lr=0.1, batch_size=32, device="cpu", progress=False
)


@pytest.fixture(scope="module")
def mix(fixtures, tmp_path_factory) -> Mix:
    return embedded_mix(fixtures, tmp_path_factory.mktemp("mix"), TRAINING)


@pytest.fixture(scope="module")
def filtered(mix) -> dict[str, dict]:
    noise = [f for f in mix.bad if f.startswith("noise")]
    patches = [f for f in mix.bad if f.startswith("patch")]
    seeds = FilterOptions(good=sorted(mix.faces)[:10], bad=noise[:5] + patches[:5])
    filter_faces(mix.ws.root, seeds)
    return {r["face_id"]: r for r in read_stage(mix.ws, FILTER).to_pylist()}


def test_twenty_seeds_separate_faces_from_noise_and_raise_the_precision(mix, filtered):
    """Trained from scratch on 178 crops for a minute, the embedding varies with the seed: over six
    training runs the scores' AUC ran 0.70 to 0.84 and the kept set's precision 0.59 to 0.85 (input 0.54).
    The bounds hold for all of them; README.md has the figures."""
    faces = set(mix.faces) | set(mix.copies)
    open_rows = [f for f, r in filtered.items() if r["seed"] is None]
    # a duplicate was judged good before dedup dropped it: it counts as chosen here
    chosen = [f for f in open_rows if filtered[f]["keep"] or filtered[f]["error"] == "duplicate"]
    before = sum(f in faces for f in open_rows) / len(open_rows)
    precision = sum(f in faces for f in chosen) / len(chosen)
    recall = sum(f in faces for f in chosen) / sum(f in faces for f in open_rows)
    assert before < 0.6 and precision >= before + 0.04 and recall >= 0.5, (before, precision, recall)
    scores = np.array([filtered[f]["score"] for f in open_rows])
    is_face = np.array([f in faces for f in open_rows])
    assert roc_auc(scores, is_face) >= 0.65  # chance is 0.5


def test_re_encoded_and_resized_copies_are_found_and_the_larger_kept(mix, filtered):
    def group(face: str) -> str | None:
        return filtered[face]["dup_group"]

    found = [copy for copy, original in mix.copies.items() if group(copy) and group(copy) == group(original)]
    # the cascade may frame the face of a resized copy differently (a box 20% larger than the scaled
    # original's): that crop is no copy of the original's crop, so one or two may be missed
    assert len(mix.copies) >= 12 and len(found) >= len(mix.copies) - 2, (found, mix.copies)
    for copy in found:
        if copy in mix.resized:  # never kept over its larger original
            assert filtered[copy]["dup_of"] is not None and not filtered[copy]["keep"]
        keeper = group(copy)
        assert filtered[keeper]["dup_of"] is None and filtered[keeper]["error"] != "duplicate"
    for copy in found:  # dropped as a duplicate (unless its score dropped it first), and told why
        if filtered[copy]["error"] == "duplicate":
            assert filtered[copy]["message"] == f"a near-duplicate of {filtered[copy]['dup_of']}"


def same_drawing(names: set[str]) -> bool:
    """Whether fixture files can show one drawing: a single file; sketch2paint's samples, which hold the
    same line art as a sketch and as colourings across its versions (no name links them); or noise
    fixtures that are copies themselves (solid black and grey test images in several sizes and
    colour profiles)."""
    return (
        len(names) == 1
        or all(n.startswith("s2p__") for n in names)
        or all("dupes" in n or "grey" in n for n in names)
    )


def test_no_distinct_drawings_are_taken_for_copies(mix, filtered):
    groups: dict[str, set[str]] = {}  # dup group → the fixture files its members come from
    for face, row in filtered.items():
        if row["dup_group"]:
            groups.setdefault(row["dup_group"], set()).add(mix.sources[face])
    assert all(same_drawing(names) for names in groups.values()), groups
    black = ("noise12-0", "noise13-0")
    assert "black" in mix.sources[black[0]] and "black" in mix.sources[black[1]]
    assert filtered[black[0]]["dup_group"] == filtered[black[1]]["dup_group"] is not None


def test_the_bad_crops_detector_facts_are_drawn_from_the_faces(mix):
    """A learned score may read the detector's score and the box's geometry: on the mix they must not
    give the bad crops away (tests/mixes.py draws them from the real faces)."""
    from curate.manifest import CROP

    crops = {r["face_id"]: r for r in read_stage(mix.ws, CROP).to_pylist() if r["status"] == "ok"}
    faces, bad = [crops[f] for f in mix.faces], [crops[f] for f in mix.bad]
    assert {r["score"] for r in bad} <= {r["score"] for r in faces} and len({r["score"] for r in bad}) > 20

    def relative_side(r: dict) -> float:
        side = min(r["face_x1"] - r["face_x0"], r["face_y1"] - r["face_y0"])
        return side / min(r["image_width"], r["image_height"])

    for fact in (lambda r: r["score"], relative_side):
        values = np.array([fact(r) for r in faces + bad])
        auc = roc_auc(values, np.array([True] * len(faces) + [False] * len(bad)))
        assert 0.35 < auc < 0.65, auc  # near chance, where the detector score alone once gave 1.0
    for r in bad:
        assert 0 <= r["face_x0"] < r["face_x1"] <= r["image_width"] + 1e-3
        assert 0 <= r["face_y0"] < r["face_y1"] <= r["image_height"] + 1e-3


def test_the_review_loop_learns_a_clean_set_from_the_crops_shapes(mix, tmp_path):
    """10 good and 10 bad seeds, then two rounds of the 20 faces the review queue shows first, answered
    from the truth (60 decisions), the learned score at target precision 0.95. The crops' shape
    (embed/shape.py) carries it, where the vote on this weak embedding stays near AUC 0.8, and the
    calibrated cut (embed/threshold.py) meets the target: here AUC 0.995, precision 0.98, recall 1.0;
    over six embeddings in tests/bench/review.py at 60 decisions, precision 0.956 to 0.989 and recall
    0.896 to 0.958."""
    from curate.manifest import part_files, part_metadata
    from curate.review import decide, review_queue
    from curate.workspace import Workspace

    shutil.copytree(mix.ws.root, tmp_path / "ws", symlinks=True)
    ws = Workspace.open(tmp_path / "ws")
    good = set(mix.faces) | set(mix.copies)
    noise = [f for f in mix.bad if f.startswith("noise")]
    patches = [f for f in mix.bad if f.startswith("patch")]
    batch = sorted(mix.faces)[:10] + noise[:5] + patches[:5]
    learned = FilterOptions(score="learned", target_precision=0.95)
    for _ in range(3):
        for face in batch:
            decide(ws, face, face.rsplit("-", 1)[0], "good" if face in good else "bad")
        filter_faces(ws.root, learned)
        batch = review_queue(ws, 20)
    rows = read_stage(ws, FILTER).to_pylist()
    chosen = {r["face_id"] for r in rows if r["keep"] or r["error"] == "duplicate"}
    precision = len(chosen & good) / len(chosen)
    recall = len(chosen & good) / len(good)
    unanswered = [r for r in rows if r["seed"] is None]
    auc = roc_auc(
        np.array([r["score"] for r in unanswered]), np.array([r["face_id"] in good for r in unanswered])
    )
    groups = part_metadata(part_files(ws, FILTER)[-1])["params"]["signal_groups"]
    assert len(rows) - len(unanswered) == 60
    assert auc >= 0.94 and precision >= 0.95 and recall >= 0.85, (auc, precision, recall)
    assert max(groups, key=lambda g: groups[g]["weight"]) in ("shape", "layout"), groups
    filter_faces(ws.root, FilterOptions(score="vote", target_precision=0.95))  # the same answers
    votes = {r["face_id"]: r["score"] for r in read_stage(ws, FILTER).to_pylist()}
    vote_auc = roc_auc(
        np.array([votes[r["face_id"]] for r in unanswered]),
        np.array([r["face_id"] in good for r in unanswered]),
    )
    assert vote_auc < auc - 0.05, (vote_auc, auc)
