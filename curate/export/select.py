"""Which faces an export holds: the filter's keepers (or every face), narrowed, balanced, split."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc

from curate.errors import InvalidArgument
from curate.manifest import CRAWL, CROP, FILTER, OK, STATUS, TAG, read_stage
from curate.tagnames import canonical_tag
from curate.workspace import Workspace

TRAIN, VALIDATION = "train", "validation"


@dataclass
class SelectOptions:
    min_score: float | None = None  # the filter's score
    exclude_monochrome: bool = False
    balance: list[str] = field(default_factory=list)  # tags to equalise by down-sampling
    max_faces: int | None = None
    validation: float = 0.05  # share of the faces in the validation split
    seed: int = 0


@dataclass
class Sample:
    """One face as exported: its crop, its labels and where it came from."""

    face_id: str
    image_id: str  # md5 of the original's bytes
    crop: str  # crop file, relative to the workspace
    labels: list[str]  # every label the tag stage gave it
    tag_scores: dict[str, float]  # the tagger's probabilities (those stored)
    filter_score: float | None
    sources: list[str]  # safebooru:6077620, local:/path …
    urls: list[str]
    split: str = TRAIN


@dataclass
class Selection:
    samples: list[Sample]
    filtered: bool  # whether the filter's keep decided
    dropped: dict[str, int]  # why faces were left out, with counts


def select_samples(ws: Workspace, options: SelectOptions) -> Selection:
    """The faces to export, in a seeded order, each with its split."""
    if not 0 <= options.validation < 1:
        raise InvalidArgument("--validation must be at least 0 and below 1")
    crops = read_stage(ws, CROP, columns=["image_id", STATUS, "path", "is_monochrome"])
    if crops.num_rows == 0:
        raise InvalidArgument(f"{ws.root} has no crop manifest yet: run `curate crop` first")
    crops = crops.filter(pc.and_(pc.equal(crops[STATUS], OK), pc.is_valid(crops["path"])))
    dropped: dict[str, int] = defaultdict(int)
    kept, scores = _filter_decisions(ws)
    samples = []
    tags = _tags(ws)
    posts = _provenance(ws)
    for face, image, path, mono in zip(
        *(crops[c].to_pylist() for c in ("face_id", "image_id", "path", "is_monochrome")), strict=True
    ):
        if kept is not None and face not in kept:
            dropped["filtered_out"] += 1
            continue
        score = scores.get(face)
        if options.min_score is not None and (score is None or score < options.min_score):
            dropped["below_min_score"] += 1
            continue
        if options.exclude_monochrome and mono:
            dropped["monochrome"] += 1
            continue
        labels, tag_scores = tags.get(face, ([], {}))
        sources, urls = posts.get(image, ([], []))
        samples.append(Sample(face, image, path, labels, tag_scores, score, sources, urls))
    rng = random.Random(options.seed)
    samples.sort(key=lambda s: s.face_id)
    rng.shuffle(samples)  # a seeded order: down-sampling, --max and the split take from its front
    if options.balance:
        samples = _balance(samples, options.balance, dropped)
    if options.max_faces is not None and len(samples) > options.max_faces:
        dropped["over_max"] += len(samples) - options.max_faces
        samples = samples[: options.max_faces]
    held = round(len(samples) * options.validation)
    for sample in samples[:held]:
        sample.split = VALIDATION
    samples.sort(key=lambda s: (s.split != TRAIN, s.face_id))
    return Selection(samples, kept is not None, dict(dropped))


def _filter_decisions(ws: Workspace) -> tuple[set[str] | None, dict[str, float]]:
    """(faces the filter kept, or None when it has not run; every face's filter score)."""
    table = read_stage(ws, FILTER, columns=["keep", "score"])
    if table.num_rows == 0:
        return None, {}
    ids = table["face_id"].to_pylist()
    kept = {face for face, keep in zip(ids, table["keep"].to_pylist(), strict=True) if keep}
    scores = {f: s for f, s in zip(ids, table["score"].to_pylist(), strict=True) if s is not None}
    return kept, scores


def _tags(ws: Workspace) -> dict[str, tuple[list[str], dict[str, float]]]:
    table = read_stage(ws, TAG, columns=[STATUS, "labels", "scored_tags", "scores"])
    table = table.filter(pc.equal(table[STATUS], OK)) if table.num_rows else table
    out = {}
    for face, labels, names, scores in zip(
        *(table[c].to_pylist() for c in ("face_id", "labels", "scored_tags", "scores")), strict=True
    ):
        out[face] = (list(labels or ()), dict(zip(names or (), scores or (), strict=True)))
    return out


def _provenance(ws: Workspace) -> dict[str, tuple[list[str], list[str]]]:
    """image id → (every post that stored it as source:id, their urls)."""
    table = read_stage(ws, CRAWL, columns=[STATUS, "image_id", "source", "source_id", "url"])
    if table.num_rows:
        table = table.filter(pc.and_(pc.equal(table[STATUS], OK), pc.is_valid(table["image_id"])))
    out: dict[str, tuple[list[str], list[str]]] = {}
    for image, source, source_id, url in zip(
        *(table[c].to_pylist() for c in ("image_id", "source", "source_id", "url")), strict=True
    ):
        sources, urls = out.setdefault(image, ([], []))
        sources.append(f"{source}:{source_id}")
        if url:
            urls.append(url)
    return out


def _balance(samples: list[Sample], tags: list[str], dropped: dict[str, int]) -> list[Sample]:
    """Equal numbers of faces per tag: faces with exactly one of `tags`, each group cut to the smallest."""
    wanted = [canonical_tag(t) for t in tags]
    groups: dict[str, list[Sample]] = {tag: [] for tag in wanted}
    for sample in samples:
        present = [tag for tag in wanted if tag in sample.labels]
        if len(present) == 1:
            groups[present[0]].append(sample)
        else:
            dropped["balance_none_or_several"] += 1
    smallest = min(len(group) for group in groups.values())
    if smallest == 0:
        empty = [tag for tag, group in groups.items() if not group]
        raise InvalidArgument(f"--balance: no face carries {', '.join(empty)} alone; nothing to balance")
    chosen = {id(s) for group in groups.values() for s in group[:smallest]}
    dropped["balance_surplus"] += sum(len(group) - smallest for group in groups.values())
    return [s for s in samples if id(s) in chosen]


def label_vector(sample: Sample, vocabulary: list[str]) -> list[float]:
    """1.0 for each vocabulary label the face carries, else 0.0, in vocabulary order."""
    have = set(sample.labels)
    return [1.0 if label in have else 0.0 for label in vocabulary]


def as_record(sample: Sample) -> dict[str, Any]:
    """The sample's fields as plain values (for metadata.jsonl and the Parquet rows)."""
    return {
        "face_id": sample.face_id,
        "md5": sample.image_id,
        "sources": sample.sources,
        "urls": sample.urls,
        "labels": sample.labels,
        "filter_score": sample.filter_score,
        "split": sample.split,
    }
