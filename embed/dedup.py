"""Near-duplicates: faces whose embeddings are at least `threshold` alike form groups; one is kept.

Pairs come from each face's k nearest neighbours, and groups are their connected components, so a
chain of near-copies (a resize of a re-encode of the original) ends up in one group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def duplicate_groups(similarities: np.ndarray, neighbours: np.ndarray, threshold: float) -> np.ndarray:
    """A group number per row (its smallest member's row): rows joined by neighbours at ≥ threshold."""
    count = len(neighbours)
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    rows, columns = np.nonzero(similarities >= threshold)
    for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
        other = int(neighbours[row, column])
        if other < 0 or other == row:
            continue
        a, b = root(row), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(count)])


def keepers(
    groups: np.ndarray, sizes: Sequence[float], scores: Sequence[float], ids: Sequence[str]
) -> list[int | None]:
    """For each row, None if it is kept, else the row of its group's keeper.

    The keeper is the member with the largest source (`sizes`, e.g. the face's side in original
    pixels), then the highest detector score, then the smallest id, so the choice never depends on order.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(groups.tolist()):
        members[group].append(row)
    kept: list[int | None] = [None] * len(groups)
    for rows in members.values():
        keeper = min(rows, key=lambda r: (-sizes[r], -scores[r], ids[r]))
        for row in rows:
            if row != keeper:
                kept[row] = keeper
    return kept
