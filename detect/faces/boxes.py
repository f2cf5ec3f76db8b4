"""Face boxes: corner coordinates in pixels of the image they were found in, with a detector score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box `[x0, x1) × [y0, y1)` and how confident its detector was."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def side(self) -> float:
        """The shorter side: what `--min-face` compares against."""
        return min(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def scaled(self, factor: float) -> Box:
        """The same box in an image resized by `factor` (e.g. 1 / decode scale back to the original)."""
        return Box(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor, self.score)

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, score: float = 1.0) -> Box:
        return cls(x, y, x + w, y + h, score)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a.area + b.area - inter)


def best_match(box: Box, candidates: Sequence[Box]) -> tuple[int, float]:
    """Index and IoU of the candidate overlapping `box` most; (-1, 0.0) when there is none."""
    best, best_iou = -1, 0.0
    for index, other in enumerate(candidates):
        overlap = iou(box, other)
        if overlap > best_iou:
            best, best_iou = index, overlap
    return best, best_iou
