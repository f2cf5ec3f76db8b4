"""The reals' side of the metrics, computed once per dataset and cached in `$CURATE_CACHE/metrics/`.

An entry is keyed by the dataset's fingerprint (its names, sizes and labels), the feature network's
sha256 and the count of images it covers: FID's mean and covariance over all the reals, and (for KID
and precision/recall) the features of the first images as float16.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import InvalidArgument
from curate.registry import cache_dir

if TYPE_CHECKING:
    from train.dataset import TrainingSet
    from train.inception import FeatureNetwork
    from train.quality import MetricSpec


@dataclass
class RealFeatures:
    """What the metrics need of the reals."""

    count: int  # images in the dataset
    mean: np.ndarray | None = None  # over all images (FID)
    cov: np.ndarray | None = None
    features: np.ndarray | None = None  # float16 [M, D] of the first M images (KID, PR)

    def rows(self, cap: int) -> np.ndarray:
        """The first `cap` feature rows, float16 (KID and PR cast what they compare at once)."""
        assert self.features is not None
        return self.features[:cap]


def metrics_cache() -> Path:
    return cache_dir() / "metrics"


def real_features(
    dataset: TrainingSet, network: FeatureNetwork, specs: list[MetricSpec], *, batch: int, progress: bool
) -> RealFeatures:
    """The reals' statistics and features `specs` need, from the cache or computed (then cached)."""
    from train.fidelity import FeatureStats
    from train.quality import REAL_CAP

    total = len(dataset)
    if total < 2:
        raise InvalidArgument(f"{dataset.path}: the metrics need at least 2 real images")
    kinds = {s.kind for s in specs}
    rows = min(total, max((REAL_CAP[k] for k in kinds if k != "fid"), default=0))
    base = f"{dataset.fingerprint[:16]}-{network.key[:12]}"
    stats_file = metrics_cache() / f"{base}-stats{total}.npz"
    features_file = metrics_cache() / f"{base}-features{rows}.npy"
    found = RealFeatures(total)
    if "fid" in kinds and stats_file.is_file():
        with np.load(stats_file) as saved:
            found.mean, found.cov = saved["mean"], saved["cov"]
    if rows and features_file.is_file():
        found.features = np.load(features_file)
    need_stats = "fid" in kinds and found.mean is None
    need_rows = rows if found.features is None else 0
    if not need_stats and not need_rows:
        return found
    upto = total if need_stats else need_rows
    stats = FeatureStats(network.dim) if need_stats else None
    kept = np.zeros((need_rows, network.dim), np.float16)
    done = 0
    for features in network.extract(_real_batches(dataset, upto, batch), upto, "real images", progress):
        if stats is not None:
            stats.add(features)
        if done < need_rows:
            take = min(len(features), need_rows - done)
            kept[done : done + take] = features[:take]
        done += len(features)
    if stats is not None:
        found.mean, found.cov = stats.mean_cov()
        _save(stats_file, lambda handle: np.savez(handle, mean=found.mean, cov=found.cov))
    if need_rows:
        found.features = kept
        _save(features_file, lambda handle: np.save(handle, kept))
    return found


def _real_batches(dataset: TrainingSet, upto: int, batch: int) -> Iterator[np.ndarray]:
    """uint8 NHWC batches of the first `upto` images, read block by block (a Parquet row group at once)."""
    pending: list[np.ndarray] = []
    for block in dataset.blocks():
        if block.start >= upto:
            break
        for _, image in dataset.images_in(range(block.start, min(block.stop, upto))):
            pending.append(image.transpose(1, 2, 0))
            if len(pending) == batch:
                yield np.stack(pending)
                pending = []
    if pending:
        yield np.stack(pending)


def _save(path: Path, write) -> None:
    """Write through a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
