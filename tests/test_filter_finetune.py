"""The filter's fine-tuned score on the real fixture mix: it learns from the seeds' pixels a little more
than the frozen embedding's vote tells, gives the same scores for the same seeds, and refuses clearly.

One short instance-discrimination run (timm's tiny test_resnet at 48 px, 5 epochs, as the benchmarks'
--quick) serves every test in this module: an embedding too weak for the vote, which the fine-tune
has to go beyond.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

import numpy as np

from curate.errors import InvalidArgument
from curate.manifest import FILTER, part_files, part_metadata, read_stage
from curate.metrics import roc_auc
from curate.workspace import Workspace
from embed.filter import FilterOptions, filter_faces
from embed.finetune import finetune_scores, stratified_folds
from embed.learned import choose_score
from embed.train import EmbedTrainOptions
from tests.mixes import Mix, embedded_mix

TRAINING = EmbedTrainOptions(
    backbone="test_resnet", dim=32, size=48, epochs=5, lr=0.1, batch_size=32, device="cpu", progress=False
)


@pytest.fixture(scope="module")
def mix(fixtures, tmp_path_factory) -> Mix:
    return embedded_mix(fixtures, tmp_path_factory.mktemp("mix"), TRAINING)


def seeds(mix: Mix, count: int) -> dict[str, list[str]]:
    noise = [f for f in mix.bad if f.startswith("noise")]
    patches = [f for f in mix.bad if f.startswith("patch")]
    return {"good": sorted(mix.faces)[:count], "bad": noise[: count // 2] + patches[: count // 2]}


def open_auc(mix: Mix) -> tuple[float, dict[str, float]]:
    """AUC of the filter's score over the faces that are not seeds, and every face's score."""
    good = set(mix.faces) | set(mix.copies)
    rows = read_stage(mix.ws, FILTER).to_pylist()
    open_rows = [r for r in rows if r["seed"] is None]
    scores = np.array([r["score"] for r in open_rows])
    return roc_auc(scores, np.array([r["face_id"] in good for r in open_rows])), {
        r["face_id"]: r["score"] for r in rows
    }


@pytest.fixture(scope="module")
def scored(mix) -> dict[str, tuple]:
    out = {}
    for score in ("vote", "finetuned", "finetuned"):
        report = filter_faces(mix.ws.root, FilterOptions(**seeds(mix, 30), score=score, review=False))
        params = part_metadata(part_files(mix.ws, FILTER)[-1])["params"]
        out[score if score not in out else "again"] = (report, params, *open_auc(mix))
    return out


def test_the_fine_tuned_score_learns_the_seeds_and_ranks_unseen_faces(scored, mix):
    vote, finetuned = scored["vote"], scored["finetuned"]
    assert (vote[0].score, finetuned[0].score) == ("vote", "finetuned")
    # On this weak 5-epoch embedding the open faces' AUC is vote 0.64 to 0.72 and fine-tuned 0.68 to 0.69
    # depending on the machine's threads (the embedding's training differs in its last digits): no
    # reliable gain over the vote here (the README's benchmark measures that on a stronger embedding).
    # What holds: the network learned the seeds it was tuned on (through augmentations, with BatchNorm
    # frozen, so not perfectly), and ranks unseen faces well above chance.
    given = seeds(mix, 30)
    good, tuned = set(given["good"]), finetuned[3]
    seed_ids = sorted(good | set(given["bad"]))
    fit = roc_auc(np.array([tuned[f] for f in seed_ids]), np.array([f in good for f in seed_ids]))
    # measured: the seeds' fit 0.84 to 0.85, the open faces 0.68 to 0.69 (chance: 0.5)
    assert fit > 0.75 and finetuned[2] > 0.62, (fit, vote[2], finetuned[2])
    params = finetuned[1]
    assert params["score"] == "finetuned" and params["options"]["score"] == "finetuned"
    assert params["signals"] == ["finetuned:instdisc:test_resnet"] and params["finetune_seconds"] > 0
    assert all(0 <= s <= 1 for s in finetuned[3].values())  # the score column holds the probability
    assert 0 < finetuned[0].threshold < 1 and finetuned[0].kept > 0


def test_the_same_seeds_give_the_same_scores(scored):
    first, again = scored["finetuned"], scored["again"]
    assert first[3] == again[3] and first[0].threshold == again[0].threshold


def test_folds_hold_both_kinds():
    y = np.array([1] * 7 + [0] * 3, dtype=np.float32)
    folds = stratified_folds(y, 5)
    assert sorted(set(folds.tolist())) == [0, 1, 2]  # as many as the smaller side has seeds
    assert all({1.0, 0.0} <= set(y[folds == f].tolist()) for f in range(3))


def test_clear_errors(mix, tmp_path):
    ids = sorted(mix.faces)[:4]
    label = np.array([1, 1, 0, 0], dtype=np.int8)
    with pytest.raises(InvalidArgument, match=r"embedded by timm:resnet18 \(pretrained features\)"):
        finetune_scores(mix.ws, "timm:resnet18", ids, ["x"] * 4, label)
    with pytest.raises(InvalidArgument, match=r"holds instdisc:test_resnet, but .* by instdisc:resnet50"):
        finetune_scores(mix.ws, "instdisc:resnet50", ids, ["x"] * 4, label)
    with pytest.raises(InvalidArgument, match=r"needs .*last\.pt"):
        finetune_scores(Workspace.open(tmp_path / "empty"), "instdisc:resnet18", ids, ["x"] * 4, label)
    with pytest.raises(InvalidArgument, match="2 seeds have none"):
        finetune_scores(mix.ws, "instdisc:test_resnet", ids, ["x", "x", None, None], label)
    with pytest.raises(InvalidArgument, match=r"the finetuned score needs at least 2 good and 2 bad"):
        choose_score("finetuned", 5, 1)
    assert choose_score("auto", 30, 30) == "learned"  # auto does not fine-tune: see the README's figures
