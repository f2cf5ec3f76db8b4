"""nagadomi's lbpcascade_animeface through OpenCV, with a score per box and no search below `min_face`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument, ModelError
from detect.faces.boxes import Box


@dataclass(frozen=True)
class CascadeSettings:
    """detectMultiScale's parameters; the defaults are the cascade README's."""

    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 24  # the smallest face searched for, in pixels of the image searched
    equalize: bool = True  # equalizeHist on the grey image, as the README does
    min_score: float | None = None  # drop boxes whose level weight is below this

    def __post_init__(self) -> None:
        if self.scale_factor <= 1.0:
            raise InvalidArgument(f"cascade scale factor must be > 1, got {self.scale_factor}")
        if self.min_neighbors < 0 or self.min_size < 1:
            raise InvalidArgument("cascade min_neighbors must be >= 0 and min_size >= 1")


class CascadeDetector:
    """Boxes scored by the cascade's final-stage level weight (higher = more face-like)."""

    name = "cascade"

    def __init__(self, model_path: str | Path, settings: CascadeSettings | None = None):
        import cv2

        self.model_path = Path(model_path)
        self.settings = settings or CascadeSettings()
        self._cascade = cv2.CascadeClassifier(str(self.model_path))
        if self._cascade.empty():
            raise ModelError(f"{self.model_path} is not an OpenCV cascade XML file")

    def decode_scale(self, width: int, height: int, min_face: float) -> float:
        # Always full size: on the fixtures, searching a 3/4-size copy lost a fifth of the faces the
        # full-size search finds, because LBP features react to resampling. Speed comes from min_size.
        return 1.0

    def search_min_size(self, min_face: float) -> int:
        """The detectMultiScale minSize for faces of `min_face` px: one pyramid step of slack below it.

        A face box is the mean of neighbouring windows; without the slack, windows just under min_face
        drop out of the group and its box shifts (IoU 0.86 against the README settings on one fixture).
        """
        return max(self.settings.min_size, int(min_face / self.settings.scale_factor))

    def detect(
        self, images: Sequence[np.ndarray], min_faces: Sequence[float] | None = None
    ) -> list[list[Box]]:
        return [
            self.detect_one(image, min_faces[i] if min_faces is not None else 0.0)
            for i, image in enumerate(images)
        ]

    def detect_one(self, rgb: np.ndarray, min_face: float = 0.0) -> list[Box]:
        """Faces in one RGB (or grey) image, highest score first."""
        import cv2

        grey = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self.settings.equalize:
            grey = cv2.equalizeHist(grey)
        side = self.search_min_size(min_face)
        if min(grey.shape[:2]) < side:
            return []
        rects, _levels, weights = self._cascade.detectMultiScale3(
            grey,
            scaleFactor=self.settings.scale_factor,
            minNeighbors=self.settings.min_neighbors,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        boxes = [
            Box.from_xywh(float(x), float(y), float(w), float(h), float(score))
            for (x, y, w, h), score in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True)
        ]
        if self.settings.min_score is not None:
            boxes = [b for b in boxes if b.score >= self.settings.min_score]
        return sorted(boxes, key=lambda b: -b.score)

    def params(self) -> dict[str, Any]:
        return {"detector": self.name, "model": self.model_path.name, **asdict(self.settings)}
