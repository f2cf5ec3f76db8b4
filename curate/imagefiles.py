"""Image files decoded in DataLoader worker processes while the model works on the batch before.

Shared by every stage that runs a network over crops (tag, tag-train, embed). A file that does not
open becomes an error code and message for its row instead of stopping the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.processes import cpu_count

Item = tuple[int, Any, str | None, str | None]  # (index, transformed image or None, error code, message)


class ImageFiles:
    """A map-style dataset: index → (index, transform(PIL image) | None, error code, message)."""

    def __init__(
        self, paths: Sequence[str | Path], transform: Callable[[Any], Any], root: Path | None = None
    ):
        self.paths, self.transform, self.root = list(paths), transform, root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        from PIL import Image, UnidentifiedImageError

        name = self.paths[index]
        path = self.root / name if self.root is not None else Path(name)
        try:
            with Image.open(path) as image:
                return index, self.transform(image), None, None
        except FileNotFoundError:
            where = "in the workspace" if self.root is not None else "there"
            return index, None, "missing_file", f"{name} is not {where}"
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return index, None, "decode_error", f"{name}: {exc}"


def collate_images(items: list[Item]) -> tuple[list[int], Any, list[tuple[int, str, str]]]:
    """(indices of the decoded images, their stacked batch, [(index, code, message)] of the failures).

    The batch is a numpy array or a torch tensor, as the transform made the items.
    """
    good = [(index, item) for index, item, _, _ in items if item is not None]
    errors = [(index, code, message) for index, item, code, message in items if item is None]
    if not good:
        return [], np.empty((0,)), errors
    first = good[0][1]
    if isinstance(first, np.ndarray):
        batch = np.stack([item for _, item in good])
    else:
        import torch

        batch = torch.stack([item for _, item in good])
    return [index for index, _ in good], batch, errors


def image_batches(
    paths: Sequence[str | Path],
    transform: Callable[[Any], Any],
    *,
    batch_size: int,
    workers: int | None = None,
    root: Path | None = None,
    **loader_options: Any,
) -> Any:
    """A DataLoader of `collate_images` batches; `workers` defaults to half the CPUs (the model wants
    the rest), and a single batch is decoded in this process."""
    from torch.utils.data import DataLoader

    workers = workers if workers is not None else max(1, cpu_count() // 2)
    workers = min(workers, max(0, (len(paths) - 1) // batch_size))
    return DataLoader(
        ImageFiles(paths, transform, root),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_images,
        prefetch_factor=4 if workers else None,
        **loader_options,
    )
