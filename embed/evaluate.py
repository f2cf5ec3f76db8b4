"""How well an embedding carries the faces' tags: weighted kNN on held-out faces (Wu et al.'s protocol).

Faces are split by a stable hash of their image; each held-out face's score for a label is the
exp(s/τ)-weighted share of its k nearest training faces that carry it, and the figure is the mean
average precision of those scores over the labels (a multi-label stand-in for kNN top-1 accuracy).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from curate.manifest import OK, STATUS, TAG, read_stage
from curate.metrics import average_precision
from curate.shard import held_out as is_held_out
from curate.workspace import Workspace
from embed.index import build_index


@dataclass
class KnnLabelReport:
    labels: int  # labels scored (those with a held-out positive)
    held_out: int  # faces
    map: float  # mean AP of the weighted kNN scores
    chance: float  # mean AP of a random ordering: each label's share of held-out positives


def knn_label_map(
    ws: Workspace,
    ids: list[str],
    vectors: np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    top: int = 50,
    min_count: int = 5,
    held_out: float = 0.2,
) -> KnnLabelReport | None:
    """The held-out weighted-kNN mAP over the `top` labels on ≥ `min_count` faces; None without tags."""
    table = read_stage(ws, TAG, columns=["image_id", STATUS, "labels"])
    table = table.filter(pc.equal(table[STATUS], OK))
    tags = {
        f: (i, set(ls or ()))
        for f, i, ls in zip(*(table[c].to_pylist() for c in ("face_id", "image_id", "labels")), strict=True)
    }
    rows = [r for r, face in enumerate(ids) if face in tags]
    if len(rows) < 10:
        return None
    counts = Counter(t for r in rows for t in tags[ids[r]][1])
    vocabulary = [t for t, n in counts.most_common(top) if n >= min_count]
    if not vocabulary:
        return None
    targets = np.array([[t in tags[ids[r]][1] for t in vocabulary] for r in rows], dtype=np.float32)
    is_val = np.array([is_held_out(tags[ids[r]][0], held_out) for r in rows])
    if is_val.all() or not is_val.any():
        return None
    train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    index, _ = build_index(vectors[[rows[i] for i in train]], "flat")
    similarities, found = index.search(
        np.ascontiguousarray(vectors[[rows[i] for i in val]]), min(k, len(train))
    )
    weights = np.exp((similarities - 1.0) / temperature) * (found >= 0)
    neighbour_targets = targets[train][np.maximum(found, 0)]  # held-out × k × labels
    scores = np.einsum("vk,vkl->vl", weights, neighbour_targets) / weights.sum(1, keepdims=True)
    ap = average_precision(scores, targets[val])
    scored = np.isfinite(ap)
    if not scored.any():
        return None
    chance = targets[val].mean(axis=0)[scored]
    return KnnLabelReport(int(scored.sum()), len(val), float(ap[scored].mean()), float(chance.mean()))
