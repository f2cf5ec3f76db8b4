"""Image quality of a generator: FID, KID and precision/recall against its training set, by NVlabs'
conventions (metric_utils): `fid50k_full` compares 50,000 generated images with all the reals.

Generated images: z ~ N(0, I) and labels drawn uniformly from the dataset's rows, both from a private
generator seeded by `seed` (the global RNG is left alone, so a training run resumes exactly), truncation
1, random noise, quantised to uint8 as saved images are, then fed through the same path as the reals.
The reals' statistics are cached per dataset fingerprint, feature network and count (train/realstats.py).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

    from train.dataset import TrainingSet
    from train.inception import FeatureNetwork

KNOWN = ("fid50k_full", "kid50k_full", "pr50k3_full")
REAL_CAP = {"fid": None, "kid": 1_000_000, "pr": 200_000}  # reals a metric reads at most (NVlabs')
SOURCE = "curate metrics"
_NAME = re.compile(r"^(fid|kid|pr)(\d+)(k?)(?:_?(\d+))?_full$")


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its kind, the generated images it uses and (precision/recall) its neighbour count."""

    kind: str  # fid, kid or pr
    count: int
    nhood: int = 3

    @property
    def name(self) -> str:
        """NVlabs' name: the count in thousands (`fid50k_full`), or whole when not a multiple of 1000
        (`fid300_full`); precision/recall adds its neighbours (`pr50k3_full`, `pr300_3_full`)."""
        count = f"{self.count // 1000}k" if self.count % 1000 == 0 else str(self.count)
        nhood = "" if self.kind != "pr" else (str(self.nhood) if count.endswith("k") else f"_{self.nhood}")
        return f"{self.kind}{count}{nhood}_full"

    @property
    def keys(self) -> list[str]:
        """The keys its values are written under."""
        return [f"{self.name}_precision", f"{self.name}_recall"] if self.kind == "pr" else [self.name]

    def with_count(self, count: int | None) -> MetricSpec:
        return self if count is None else replace(self, count=count)


def parse_metric(name: str) -> MetricSpec:
    """`fid50k_full` → MetricSpec('fid', 50000); InvalidArgument naming the known metrics otherwise."""
    found = _NAME.match(name.strip())
    known = f"known: {', '.join(KNOWN)} (another count too: fid10k_full, kid300_full, pr5k3_full)"
    if not found:
        raise InvalidArgument(f"unknown metric {name!r}; {known}")
    kind, digits, thousands, nhood = found.groups()
    count = int(digits) * (1000 if thousands else 1)
    if kind == "pr" and nhood is None:
        raise InvalidArgument(f"{name!r}: precision/recall names its neighbours (pr50k3_full); {known}")
    if kind != "pr" and nhood is not None:
        raise InvalidArgument(f"unknown metric {name!r}; {known}")
    spec = MetricSpec(kind, count, int(nhood) if nhood else 3)
    check_count(spec, count)
    return spec


def check_count(spec: MetricSpec, count: int) -> None:
    least = spec.nhood + 1 if spec.kind == "pr" else 2
    if count < least or spec.nhood < 1:
        raise InvalidArgument(f"{spec.name} needs at least {least} generated images and 1 neighbour")


def parse_metrics(names: list[str] | tuple[str, ...] | str, n: int | None = None) -> list[MetricSpec]:
    """The metrics asked for (a list or comma-separated), each with `n` generated images if given."""
    if isinstance(names, str):
        names = [part for part in names.split(",") if part.strip()]
    specs = []
    for name in names:
        spec = parse_metric(name)
        if n is not None:
            check_count(spec, n)
        spec = spec.with_count(n)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise InvalidArgument(f"no metric given; known: {', '.join(KNOWN)}")
    return specs


def feature_network(inception: str | Path | None, device: str | torch.device) -> FeatureNetwork:
    """The network every metric reads images through: pytorch-fid's Inception (train/inception.py).

    The one seam for tests: a test of the training loop swaps this function for a cheap stand-in,
    the Inception path being tested on its own."""
    from train.inception import load_inception

    return load_inception(inception, device)


def prepare_metrics(metrics: list[str], device: str | torch.device, n: int | None = None) -> None:
    """Check names and the feature network's weights before hours of training, not at the first snapshot."""
    parse_metrics(metrics, n)
    feature_network(None, device)


def measure_generator(
    G: torch.nn.Module,
    dataset: TrainingSet,
    metrics: list[str],
    device: str | torch.device,
    *,
    n: int | None = None,
    seed: int = 0,
    progress: bool = True,
    batch: int = 32,
    inception: str | Path | None = None,
) -> dict[str, float]:
    """{key: value} of each metric for G against `dataset` (`n` generated images instead of each
    metric's own count, which the keys then say: fid5k_full)."""
    from train.fidelity import fid_of, kid, precision_recall
    from train.realstats import real_features

    specs = parse_metrics(metrics, n)
    network = feature_network(inception, device)
    reals = real_features(dataset, network, specs, batch=batch, progress=progress)
    fakes = generated_features(
        G, dataset.labels, network, max(s.count for s in specs), seed=seed, batch=batch, progress=progress
    )
    values: dict[str, float] = {}
    for spec in specs:
        ours = fakes[: spec.count]
        if spec.kind == "fid":
            values[spec.name] = fid_of(ours, reals.mean, reals.cov)
        elif spec.kind == "kid":
            values[spec.name] = kid(reals.rows(REAL_CAP["kid"]), ours, seed=seed)
        else:
            real_rows = reals.rows(REAL_CAP["pr"])
            if len(real_rows) <= spec.nhood:
                raise InvalidArgument(
                    f"{spec.name}: the dataset has {len(real_rows)} images; {spec.nhood} neighbours need more"
                )
            precision, recall = precision_recall(real_rows, ours, nhood=spec.nhood, device=network.device)
            values[f"{spec.name}_precision"], values[f"{spec.name}_recall"] = precision, recall
    return values


def generated_features(
    G: torch.nn.Module,
    labels: np.ndarray,
    network: FeatureNetwork,
    count: int,
    *,
    seed: int,
    batch: int,
    progress: bool,
) -> np.ndarray:
    """Features [count, D] of G's images, z and labels from a private generator seeded by `seed`."""
    import torch

    from train.inference import to_uint8

    device = next(G.parameters()).device
    c_dim = int(G.c_dim)
    if c_dim > labels.shape[1]:
        raise InvalidArgument(
            f"the generator takes {c_dim} labels but the dataset has {labels.shape[1]}: "
            "give the data it was trained on"
        )
    table = torch.from_numpy(np.ascontiguousarray(labels[:, :c_dim], np.float32))
    draws = torch.Generator().manual_seed(seed)  # z and labels: the same on any device
    noise = torch.Generator(device=device).manual_seed(seed)

    def batches():
        for start in range(0, count, batch):
            size = min(batch, count - start)
            z = torch.randn(size, G.z_dim, generator=draws)
            c = table[torch.randint(len(table), (size,), generator=draws)] if c_dim else None
            with torch.no_grad():
                images = G(
                    z.to(device), None if c is None else c.to(device), noise_mode="random", generator=noise
                )
            yield to_uint8(images)

    was_training = G.training
    G.eval()
    try:
        return np.concatenate(list(network.extract(batches(), count, "generated images", progress)))
    finally:
        G.train(was_training)


@dataclass
class MetricsReport:
    """What `curate metrics` measured and where it wrote it."""

    snapshot: Path
    nimg: int
    data: Path
    reals: int
    values: dict[str, float]
    generated: int
    seconds: float
    metrics_file: Path
    record: dict = field(default_factory=dict)


def measure_run(
    run: str | Path,
    *,
    data: str | Path | None = None,
    metrics: list[str] | str = ("fid50k_full",),
    snapshot: str | None = None,
    n: int | None = None,
    batch: int = 32,
    device: str = "auto",
    inception: str | Path | None = None,
    progress: bool = True,
) -> MetricsReport:
    """Measure a run's snapshot (the newest by default) and append the line to the run's metrics.jsonl."""
    from curate.manifest import now_utc
    from train.dataset import open_dataset
    from train.inference import load_generator
    from train.runs import METRICS_FILE

    specs = parse_metrics(metrics, n)  # a typo fails before anything loads
    gen = load_generator(Path(run), snapshot, device)
    path = Path(data).expanduser() if data is not None else training_data(gen.snapshot.parent, gen.dataset)
    dataset = open_dataset(path, progress=progress)
    if dataset.resolution != gen.resolution:
        raise InvalidArgument(
            f"{path} holds {dataset.resolution}² images but the generator makes {gen.resolution}²: "
            "give data of its resolution"
        )
    began = time.monotonic()
    names = [s.name for s in specs]
    values = measure_generator(
        gen.G, dataset, names, gen.device, progress=progress, batch=batch, inception=inception
    )
    seconds = time.monotonic() - began
    generated = max(s.count for s in specs)
    record = {
        "nimg": gen.nimg,
        "kimg": round(gen.nimg / 1000, 3),
        "snapshot": gen.snapshot.name,
        **values,
        "source": SOURCE,
        "n": generated,
        "reals": len(dataset),
        "data": str(dataset.path),
        "seconds": round(seconds, 2),
        "time": now_utc().isoformat(),
    }
    metrics_file = gen.snapshot.parent / METRICS_FILE
    with open(metrics_file, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return MetricsReport(
        gen.snapshot, gen.nimg, dataset.path, len(dataset), values, generated, seconds, metrics_file, record
    )


def training_data(run: Path, described: dict) -> Path:
    """The data a run trained on: its snapshot's record, else options.json's --data."""
    from train.runs import read_options

    options = read_options(run) or {}
    for candidate in (described.get("path"), options.get("data")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    named = described.get("path") or options.get("data")
    gone = f"its training data {named} is not there" if named else "it does not record its training data"
    raise InvalidArgument(f"{run}: {gone}; give --data")
