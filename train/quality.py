"""Image quality of a generator: FID, KID, precision/recall (placeholder)."""

from __future__ import annotations

from curate.errors import InvalidArgument


def measure_generator(G, dataset, metrics: list[str], device, *, n=None, seed=0, progress=True) -> dict:
    """{metric name: value} for G against `dataset`."""
    raise InvalidArgument("--metrics is not built yet")
