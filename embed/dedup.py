"""Near-duplicates: faces whose embeddings are at least `threshold` alike form groups; one is kept.

Pairs come from each face's k nearest neighbours, and groups are their connected components, so a
chain of near-copies (a resize of a re-encode of the original) ends up in one group. A pair can be
confirmed on the pixels too (`PixelCheck`): an embedding trained to tell images apart still puts two
drawings of one character close, and dropping a distinct drawing as a "copy" loses data for good.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

THUMBNAIL = 16  # side of the grey thumbnails compared: blind to re-encoding, resizing and a shifted box
FLAT = 2.0  # grey levels of standard deviation below which a thumbnail has no pattern to correlate


def duplicate_groups(
    similarities: np.ndarray,
    neighbours: np.ndarray,
    threshold: float,
    confirm: Callable[[int, int], bool] | None = None,
) -> np.ndarray:
    """A group number per row (its smallest member's row): rows joined by neighbours at ≥ threshold
    (and, if given, for which `confirm(row, other)` holds)."""
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
        if a != b and (confirm is None or confirm(row, other)):
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


class PixelCheck:
    """Confirms a pair when their grey thumbnails correlate at ≥ `threshold` (Pearson).

    Thumbnails are read once, when first asked for. Two flat thumbnails (blank crops) match when
    their mean grey levels are within 8 of each other; a file that does not open matches nothing.
    """

    def __init__(self, paths: Sequence[Path | None], threshold: float = 0.8):
        self.paths, self.threshold = paths, threshold
        self._thumbnails: dict[int, np.ndarray | None] = {}

    def thumbnail(self, row: int) -> np.ndarray | None:
        if row not in self._thumbnails:
            self._thumbnails[row] = _grey_thumbnail(self.paths[row])
        return self._thumbnails[row]

    def __call__(self, a: int, b: int) -> bool:
        first, second = self.thumbnail(a), self.thumbnail(b)
        if first is None or second is None:
            return False
        spread = first.std(), second.std()
        if min(spread) < FLAT:
            return max(spread) < FLAT and abs(first.mean() - second.mean()) < 8
        return float(np.corrcoef(first, second)[0, 1]) >= self.threshold


def _grey_thumbnail(path: Path | None) -> np.ndarray | None:
    from PIL import Image

    if path is None:
        return None
    try:
        with Image.open(path) as image:
            image.draft("L", (THUMBNAIL * 2, THUMBNAIL * 2))  # JPEGs decode at a fraction of the size
            grey = image.convert("L").resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    except (OSError, ValueError):
        return None
    return np.asarray(grey, dtype=np.float32).ravel()
