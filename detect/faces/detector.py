"""The one interface every face detector offers: RGB images in, boxes with scores out, batched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from detect.faces.boxes import Box


class Detector(Protocol):
    """A face detector. Boxes are in the pixel coordinates of the array it was given."""

    name: str  # "cascade" | "frcnn": recorded in every crop row

    def decode_scale(self, width: int, height: int, min_face: float) -> float:
        """How much of an original of this size (≤ 1) the detector needs to see faces ≥ `min_face` px."""
        ...

    def detect(
        self, images: Sequence[np.ndarray], min_faces: Sequence[float] | None = None
    ) -> list[list[Box]]:
        """Faces in each H×W×3 uint8 RGB image; `min_faces[i]` (pixels of image i) may skip smaller."""
        ...

    def params(self) -> dict[str, Any]:
        """Settings that change its output, for the manifest's part metadata."""
        ...
