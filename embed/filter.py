"""`curate filter`: keep the faces that look like the good seeds, and one of each near-duplicate group.

Following EDITH: a face's goodness is a similarity-weighted vote of its k nearest seeds in the
embedding (good seeds vote 1, bad seeds 0), and the good set grows over a few rounds by taking in the
faces the vote is confident about (with good seeds only: the faces at least as near them as the median
seed is to the others). The threshold is given, or chosen by leave-one-out over the seeds so that the
estimated precision meets a target.

With enough good and bad seeds (`score="auto"`, or `"learned"`), a logistic regression fitted on the
seeds (embed/learned.py) scores the faces instead, over the vote and more signals: the embedding
itself, the crop's shape (embed/shape.py), the detector's score, the crop's geometry and the tagger's
probabilities. Its threshold is where the seeds' held-out probabilities, calibrated on their answers,
say a face is good at the odds the target asks for (embed/threshold.py); mining is the vote's and is
skipped.
`score="finetuned"` fine-tunes the embedding's network itself on the seed crops (embed/finetune.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.errors import InvalidArgument
from curate.manifest import CROP, FILTER, OK, SKIPPED, STATUS, TAG, PartWriter, now_utc, read_stage
from curate.review import review_seeds
from curate.tagnames import canonical_tag
from curate.workspace import Workspace
from embed.dedup import PixelCheck, duplicate_groups, keepers
from embed.finetune import FinetunedScore
from embed.index import build_index, knn_all
from embed.learned import SCORES, FaceFacts, LearnedScore, choose_score, learn, signals
from embed.shape import describe_files, shape_descriptors
from embed.stage import read_embeddings
from embed.threshold import calibrated_threshold, choose_threshold

TEMPERATURE = 0.07  # of the vote's weights exp(similarity / τ), as instance discrimination's softmax
COLLAPSED = 0.97  # a median nearest-neighbour similarity this high: the embedding has not separated faces


@dataclass
class FilterOptions:
    good: list[str] = field(default_factory=list)  # face ids
    bad: list[str] = field(default_factory=list)
    good_query: str | None = None  # tags every good seed carries (tagger or booru labels)
    bad_query: str | None = None
    k: int = 10
    rounds: int = 2  # mining rounds that grow the seed sets
    mine_confidence: float = 0.9  # a face joins the good (bad) seeds at a vote ≥ this (≤ 1 − this)
    threshold: float | None = None  # keep faces scoring ≥ this; None: chosen by leave-one-out
    target_precision: float = 0.9
    dedup: float | None = 0.98  # cosine at which faces are near-duplicates; None: no dedup
    dedup_pixels: float | None = 0.8  # and the correlation their 16-px grey thumbnails need; None: no check
    model: str | None = None  # which embedding (default the newest)
    review: bool = True  # faces people marked good/bad in `curate serve` are seeds too
    # vote | learned | finetuned | auto (learned from 8 good and 8 bad seeds on): what the cut applies to
    score: str = "auto"
    # called with (step, fraction done) as the filter goes: `curate serve` shows it as a progress bar
    on_progress: Callable[[str, float], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise InvalidArgument(f"a filter score is one of {', '.join(SCORES)}, not {self.score!r}")

    def params(self) -> dict[str, Any]:
        """The options as the manifest records them (enough to run the same filter again)."""
        return {name: value for name, value in vars(self).items() if name != "on_progress"}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FilterOptions:
        """The options a filter part's params record; the chosen threshold is chosen again."""
        known = {f for f in cls.__dataclass_fields__ if f != "on_progress"}
        given = {k: v for k, v in params.get("options", {}).items() if k in known}
        return cls(**given)


@dataclass
class FilterReport:
    faces: int
    good_seeds: int
    bad_seeds: int
    mined_good: int
    mined_bad: int
    threshold: float
    estimated_precision: float | None
    target_met: bool  # False: no threshold reached --target-precision on the seeds; the majority vote cut
    kept: int
    reasons: Counter[str] = field(default_factory=Counter)
    score: str = "vote"  # the score the threshold applied to: vote | learned | finetuned
    signals: list[str] = field(default_factory=list)  # the learned score's inputs
    # the median similarity of a face to its nearest other face: near 1, the embedding tells faces
    # apart too little for the vote or for dedup to mean much (train it longer)
    nearest_similarity: float = 0.0

    @property
    def collapsed(self) -> bool:
        return self.nearest_similarity >= COLLAPSED


def query_seeds(ws: Workspace, query: str) -> list[str]:
    """Faces whose tag-stage labels include every tag of `query` (spaces or underscores alike)."""
    wanted = {canonical_tag(t) for t in query.replace(",", " ").split()}
    table = read_stage(ws, TAG, columns=[STATUS, "labels"])
    table = table.filter(pc.equal(table[STATUS], OK))
    if table.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no tagged faces for a tag query: run `curate tag` first")
    return [
        face for face, labels in zip(table["face_id"].to_pylist(), table["labels"].to_pylist(), strict=True)
        if wanted <= set(labels or ())
    ]  # fmt: skip


def vote(similarities: np.ndarray, neighbours: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each row's share of exp(s/τ) weight that its labelled neighbours (1 good, 0 bad) give to good.

    `label` holds 1, 0 or -1 (unlabelled) per face; unlabelled neighbours do not vote. A row with no
    labelled neighbour gets NaN.
    """
    labels = np.where(neighbours >= 0, label[np.maximum(neighbours, 0)], -1)
    weights = np.exp((similarities - 1.0) / TEMPERATURE) * (labels >= 0)  # shifted: no overflow
    total = weights.sum(axis=1)
    good = (weights * (labels == 1)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, good / total, np.nan)


class Scorer:
    """Scores every face by its k nearest labelled faces, searched in an index of the labelled ones."""

    def __init__(self, vectors: np.ndarray, k: int):
        self.vectors, self.k = vectors, k

    def nearest(
        self, label: np.ndarray, k: int, *, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, rows) of each face's k nearest faces with label ≥ 0; −inf and −1 pad short rows."""
        labelled = np.flatnonzero(label >= 0)
        index, _ = build_index(self.vectors[labelled])
        similarities, found = index.search(self.vectors, min(len(labelled), k + exclude_self))
        rows = np.where(found >= 0, labelled[np.maximum(found, 0)], -1)
        similarities = np.where(found >= 0, similarities, -np.inf)
        if exclude_self:  # leave-one-out: a seed does not vote for itself
            own = rows == np.arange(len(rows))[:, None]
            order = np.argsort(own, axis=1, kind="stable")  # its own row, if found, moves to the end
            rows = np.take_along_axis(np.where(own, -1, rows), order, axis=1)[:, :k]
            similarities = np.take_along_axis(np.where(own, -np.inf, similarities), order, axis=1)[:, :k]
        return similarities, rows

    def scores(self, label: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
        """The vote of the k nearest labelled faces; with no bad label, their mean similarity."""
        similarities, rows = self.nearest(label, self.k, exclude_self=exclude_self)
        if (label == 0).any():
            return vote(similarities, rows, label)
        valid = rows >= 0
        with np.errstate(invalid="ignore"):
            return np.where(valid, similarities, 0).sum(axis=1) / valid.sum(axis=1)


def filter_faces(workspace: str | Path, options: FilterOptions) -> FilterReport:
    """Score, mine, threshold and deduplicate every embedded face; write the filter manifest."""
    ws = Workspace.open(workspace)
    progress = options.on_progress or (lambda step, fraction: None)
    progress("reading embeddings", 0.0)
    ids, vectors, model = read_embeddings(ws, options.model)
    position = {face: row for row, face in enumerate(ids)}
    label = np.full(len(ids), -1, dtype=np.int8)
    good, good_extra, good_files = _seed_ids(ws, options.good, model, vectors.shape[1])
    bad, bad_extra, bad_files = _seed_ids(ws, options.bad, model, vectors.shape[1])
    reviewed_good, reviewed_bad = review_seeds(ws) if options.review else ([], [])
    # a face reviewed after it was given as a seed: the person's newer decision stands
    good = [f for f in good if f not in reviewed_bad] + reviewed_good
    bad = [f for f in bad if f not in reviewed_good] + reviewed_bad
    good += query_seeds(ws, options.good_query) if options.good_query else []
    bad += query_seeds(ws, options.bad_query) if options.bad_query else []
    faces = len(ids)
    if len(good_extra) or len(bad_extra):  # example images from folders: extra rows, never written out
        vectors = np.concatenate([vectors, good_extra, bad_extra])
        label = np.concatenate([label, np.ones(len(good_extra), np.int8), np.zeros(len(bad_extra), np.int8)])
        extra = [f"example:{n}" for n in range(len(good_extra) + len(bad_extra))]
        position.update({name: faces + n for n, name in enumerate(extra)})
        ids = ids + extra
    unreviewed = set(reviewed_good + reviewed_bad) - set(position)
    good = [f for f in good if f not in unreviewed]  # reviewed faces no longer embedded: not seeds
    bad = [f for f in bad if f not in unreviewed]
    unknown = [face for face in good + bad if face not in position]
    if unknown:
        raise InvalidArgument(f"{len(unknown)} seeds are not embedded faces: {', '.join(unknown[:8])}")
    if not good and not len(good_extra):
        raise InvalidArgument("give at least one good seed (--good, --good-query or a review)")
    label[[position[f] for f in bad]] = 0
    label[[position[f] for f in good]] = 1  # a face given as both counts as good
    seeds = label.copy()
    progress("scoring", 0.1)
    scorer = Scorer(vectors, options.k)
    good_only = not (label == 0).any()
    loo = scorer.scores(seeds, exclude_self=True)
    # with good seeds only, "sure" means at least as near the seeds as the typical seed is to the others
    sure = float(np.nanmedian(loo[seeds == 1])) if good_only and (seeds == 1).sum() > 1 else None
    method = choose_score(options.score, int((seeds == 1).sum()), int((seeds == 0).sum()))
    crops = _crop_facts(ws)
    if method != "vote":
        return _finish_learned(
            ws, options, ids, faces, vectors, scorer, seeds, loo, crops, model, progress, method,
            good_files + bad_files,
        )  # fmt: skip
    for round_ in range(options.rounds):
        progress(f"mining round {round_ + 1}", 0.2 + 0.4 * round_ / max(options.rounds, 1))
        scores = scorer.scores(label)
        open_rows = label < 0
        if not good_only:
            label[open_rows & (scores >= options.mine_confidence)] = 1
            label[open_rows & (scores <= 1 - options.mine_confidence)] = 0
        elif sure is not None:
            label[open_rows & (scores >= sure)] = 1
    if options.threshold is not None:
        threshold, precision, met = options.threshold, None, True
    else:
        threshold, precision, met = choose_threshold(
            loo, seeds, options.target_precision, good_only=good_only
        )
    scores = scorer.scores(label)
    return _write(
        ws, options, ids, faces, scorer, seeds, label, scores, (threshold, precision, met), crops, model,
        progress, None,
    )  # fmt: skip


def _finish_learned(
    ws: Workspace, options: FilterOptions, ids: list[str], faces: int, vectors: np.ndarray, scorer: Scorer,
    seeds: np.ndarray, loo: np.ndarray, crops: dict[str, CropFacts], model: str,
    progress: Callable[[str, float], None], method: str, example_files: list[Path],
) -> FilterReport:  # fmt: skip
    """Fit the learned score (or fine-tune the network) on the seeds, choose its threshold on their
    held-out scores, and write. `example_files`: the images of the rows after `faces`, in order."""
    paths = [crops[face].path if face in crops else None for face in ids]
    if method == "finetuned":
        from embed.finetune import finetune_scores

        progress("learning from the seeds", 0.3)
        learned = finetune_scores(ws, model, ids, paths, seeds)
    else:
        progress("describing the crops' shapes", 0.3)
        shapes = shape_descriptors(ws, ids[:faces], paths[:faces])
        if example_files:  # the seed folders' images are described too, as their crops would be
            examples = describe_files(example_files)
            shapes = {name: np.concatenate([shapes[name], examples[name]]) for name in shapes}
        progress("learning from the seeds", 0.4)
        near = [  # the seeds' own similarities leave them out, as their vote (`loo`) does
            scorer.nearest(np.where(seeds == side, 1, -1).astype(np.int8), 3, exclude_self=True)[0]
            for side in (1, 0)
        ]
        facts = {face: FaceFacts(c.score, c.width, c.height, c.image_side) for face, c in crops.items()}
        learned = learn(*signals(ws, ids, vectors, loo, *near, facts, shapes), seeds)
    if options.threshold is not None:
        threshold, precision, met, cut = options.threshold, None, True, None  # _write records "given"
    else:
        target = options.target_precision
        threshold, precision, met, cut = calibrated_threshold(learned.held_out, seeds, target)
    return _write(
        ws, options, ids, faces, scorer, seeds, seeds.copy(), learned.scores, (threshold, precision, met),
        crops, model, progress, learned, cut,
    )  # fmt: skip


def _write(
    ws: Workspace,
    options: FilterOptions,
    ids: list[str],
    faces: int,
    scorer: Scorer,
    seeds: np.ndarray,
    label: np.ndarray,
    scores: np.ndarray,
    chosen: tuple[float, float | None, bool],
    crops: dict[str, CropFacts],
    model: str,
    progress: Callable[[str, float], None],
    learned: LearnedScore | FinetunedScore | None,
    cut: dict | None = None,
) -> FilterReport:
    """Keep by the threshold, deduplicate, write the filter manifest and report. `cut`: how the
    threshold was chosen (embed/threshold.py), when neither given nor by the vote's rule."""
    threshold, precision, met = chosen
    method = "vote" if learned is None else "finetuned" if isinstance(learned, FinetunedScore) else "learned"
    keep = ((scores >= threshold) | (seeds == 1)) & (seeds != 0)
    progress("deduplicating", 0.7)
    near_all, neighbours_all, _ = knn_all(scorer.vectors[:faces], min(faces, 10))
    groups = _dedup(ws, crops, ids[:faces], near_all, neighbours_all, options.dedup, options.dedup_pixels)
    _, nearest_seeds = scorer.nearest(seeds, 3, exclude_self=True)
    rows, reasons = _rows(
        crops, ids, faces, scores, keep, seeds, label, nearest_seeds, groups, model, threshold
    )
    params = {
        "model": model,
        "k": options.k,
        "threshold": threshold,
        "cut": cut or {"rule": "given" if options.threshold is not None else "held-out precision"},
        "score": method,
        "signals": learned.signals if learned else [],
        "l2": learned.l2 if learned else None,
        "signal_groups": learned.groups if isinstance(learned, LearnedScore) else {},
        "finetune_seconds": round(learned.seconds, 2) if isinstance(learned, FinetunedScore) else None,
        "dedup": options.dedup,
        "dedup_pixels": options.dedup_pixels,
        "rounds": options.rounds,
        "target_precision": options.target_precision,
        "estimated_precision": precision,
        "options": options.params(),
    }
    progress("writing", 0.9)
    writer = PartWriter(ws, FILTER, params)
    writer.extend(rows)
    writer.flush(complete=True)
    progress("done", 1.0)
    return FilterReport(
        faces=faces,
        good_seeds=int((seeds == 1).sum()),
        bad_seeds=int((seeds == 0).sum()),
        mined_good=int(((label == 1) & (seeds < 0)).sum()),
        mined_bad=int(((label == 0) & (seeds < 0)).sum()),
        threshold=threshold,
        estimated_precision=precision,
        target_met=met,
        kept=reasons["kept"],
        reasons=reasons,
        nearest_similarity=_nearest_similarity(near_all, neighbours_all),
        score=method,
        signals=learned.signals if learned else [],
    )


def _nearest_similarity(similarities: np.ndarray, neighbours: np.ndarray) -> float:
    """Median over faces of the similarity to the nearest other face."""
    others = np.where(neighbours == np.arange(len(neighbours))[:, None], -np.inf, similarities)
    return float(np.median(others.max(axis=1))) if len(neighbours) > 1 else 0.0


@dataclass(frozen=True)
class DupGroups:
    keeper: list[int | None]  # per face: None if kept, else the row of its group's keeper
    group: list[int | None]  # per face: the row of its group's keeper; None when it has no duplicate


def _seed_ids(
    ws: Workspace, given: list[str], model: str, dim: int
) -> tuple[list[str], np.ndarray, list[Path]]:
    """Face ids as given, and the embeddings (`dim` wide, none without folders) and files of the images
    in any folder given instead of ids."""
    ids, folders = [], []
    for item in given:
        (folders if Path(item).is_dir() else ids).append(item)
    if not folders:
        return ids, np.empty((0, dim), np.float32), []  # of the embeddings' width: it joins them
    from embed.stage import embed_files

    paths = [p for folder in folders for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in _IMAGES]
    if not paths:
        raise InvalidArgument(f"no images in {', '.join(folders)}")
    return ids, embed_files(ws, model, paths), paths


_IMAGES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


@dataclass(frozen=True)
class CropFacts:
    """What the crop manifest says of a face that the filter needs."""

    image_id: str
    side: float  # the face box's shorter side in original pixels: the size of its source
    score: float  # the detector's
    path: str | None  # the crop, relative to the workspace
    width: float = math.nan  # the face box's, in original pixels
    height: float = math.nan
    image_side: float = math.nan  # the image's shorter side


def _crop_facts(ws: Workspace) -> dict[str, CropFacts]:
    names = ("face_id", "image_id", "face_x0", "face_x1", "face_y0", "face_y1", "score", "path")
    crops = read_stage(ws, CROP, columns=[*names[1:], "image_width", "image_height"])
    facts = {}
    for face, image, x0, x1, y0, y1, score, path, width, height in zip(
        *(crops[c].to_pylist() for c in (*names, "image_width", "image_height")), strict=True
    ):
        box = (x1 - x0, y1 - y0) if x0 is not None else (math.nan, math.nan)
        facts[face] = CropFacts(
            image, min(box) if x0 is not None else 0.0, score or 0.0, path, *box,
            min(width, height) if width and height else math.nan,
        )  # fmt: skip
    return facts


def _dedup(
    ws: Workspace,
    crops: dict[str, CropFacts],
    ids: list[str],
    similarities: np.ndarray,
    neighbours: np.ndarray,
    threshold: float | None,
    pixels: float | None,
) -> DupGroups:
    if threshold is None or len(ids) < 2:
        return DupGroups([None] * len(ids), [None] * len(ids))
    unknown = CropFacts("", 0.0, 0.0, None)
    confirm = None
    if pixels is not None:
        paths = [crops.get(face, unknown).path for face in ids]
        confirm = PixelCheck([ws.root / p if p else None for p in paths], pixels)
    groups = duplicate_groups(similarities, neighbours, threshold, confirm)
    sizes = [crops.get(face, unknown).side for face in ids]
    scores = [crops.get(face, unknown).score for face in ids]
    keeper = keepers(groups, sizes, scores, ids)
    members = Counter(groups.tolist())
    group = [
        (row if keeper[row] is None else keeper[row]) if members[g] > 1 else None
        for row, g in enumerate(groups.tolist())
    ]
    return DupGroups(keeper, group)


def _rows(
    crops: dict[str, CropFacts],
    ids: list[str],
    faces: int,
    scores: np.ndarray,
    keep: np.ndarray,
    seeds: np.ndarray,
    label: np.ndarray,
    nearest_seeds: np.ndarray,
    groups: DupGroups,
    model: str,
    threshold: float,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    rows, reasons = [], Counter()
    for row, face in enumerate(ids[:faces]):
        nearest = [int(n) for n in nearest_seeds[row] if n >= 0]
        duplicate_of = groups.keeper[row]
        reason = None
        if seeds[row] == 0:
            reason = "bad_seed"
        elif not keep[row]:
            reason = "low_score"
        elif duplicate_of is not None:
            reason = "duplicate"
        reasons[reason or "kept"] += 1
        rows.append(
            {
                "face_id": face,
                "image_id": crops[face].image_id if face in crops else face.rsplit("-", 1)[0],
                STATUS: SKIPPED if reason else OK,
                "error": reason,
                "message": _message(reason, scores[row], threshold, ids, duplicate_of),
                "model": model,
                "score": None if math.isnan(scores[row]) else float(scores[row]),
                "seed": {1: "good", 0: "bad"}.get(int(seeds[row])),
                "mined": {1: "good", 0: "bad"}.get(int(label[row])) if seeds[row] < 0 else None,
                "nearest_seeds": [ids[n] for n in nearest],
                "dup_group": ids[groups.group[row]] if groups.group[row] is not None else None,
                "dup_of": ids[duplicate_of] if duplicate_of is not None else None,
                "keep": reason is None,
                "filtered_at": now_utc(),
            }
        )
    return rows, reasons


def _message(
    reason: str | None, score: float, threshold: float, ids: list[str], dup: int | None
) -> str | None:
    if reason is None:
        return None
    if reason == "duplicate" and dup is not None:
        return f"a near-duplicate of {ids[dup]}"
    if reason == "bad_seed":
        return "given as a bad seed"
    return f"score {score:.3f} < threshold {threshold:.3f}"
