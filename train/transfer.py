"""`curate train --init`: a new run's networks start from pretrained weights (placeholder)."""

from __future__ import annotations

from pathlib import Path

from curate.errors import InvalidArgument


def initialise(trainer, path: Path, label_names: list[str]):
    """Copy the weights in `path` onto the trainer's G, D and G_ema; returns what was copied."""
    raise InvalidArgument("--init is not built yet")
