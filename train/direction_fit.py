"""`curate directions`: sample many w, tag their faces, fit one logistic regression per tag in W.

The normal of each tag's decision boundary, in W coordinates and of unit length, is its direction;
its scale is the spread of the sampled ws along it (train/directions.py stores and applies them).
The regression is a few lines of torch (standardised w, L2, full-batch L-BFGS) rather than a new
dependency. Rare tags make accuracy flatter than it is, so the held-out AUC, the balanced accuracy and
each tag's share of positives are reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import InvalidArgument, ModelError
from curate.progress import StageProgress
from curate.tagnames import current_tag, nearest_tags, tag_index

if TYPE_CHECKING:
    import torch

    from train.inference import TrainedGenerator

TABLE_FILE = "directions.json"
MIN_POSITIVES = 20  # a tag needs this many positives and negatives (and MIN_SHARE of the samples)…
MIN_SHARE = 0.02  # …or its boundary is fitted to a handful of faces
MIN_SAMPLES = 50
FIT_STEPS = 200  # L-BFGS iterations: a convex problem of w_dim + 1 unknowns converges well within
# L2 weights tried per tag, the one with the least log loss on a quarter of the fitting share kept: clean
# tags want little (the boundary is sharp), noisy or rare ones more (measured: the recovered direction's
# cosine to the true one, 512-dim w, 10k samples, moves by up to 0.15 between these)
L2_GRID = (1e-4, 1e-3, 1e-2)


@dataclass
class Tagging:
    """What tags the sampled faces: a name, its vocabulary in column order, and a function of a batch
    of images (uint8 NHWC) and their w ([B, w_dim]) giving probabilities [B, len(names)].

    A tagger reads only the images; the ws are there for stand-ins whose answer is a function of w."""

    name: str
    names: list[str]
    probabilities: Callable[[np.ndarray, torch.Tensor], np.ndarray]


def tagger_tagging(model: str | Path | None, device: str = "auto") -> Tagging:
    """`curate tag`'s tagger (a WD folder or hub id; None: the default), preprocessing as it does."""
    from PIL import Image

    from detect.tags.tagger import Tagger

    tagger = Tagger(model, device)

    def probabilities(images: np.ndarray, ws: torch.Tensor) -> np.ndarray:
        batch = np.stack([tagger.preprocess(Image.fromarray(image)) for image in images])
        return tagger.predict(batch)

    return Tagging(tagger.name, list(tagger.tags.names), probabilities)


@dataclass
class DirectionsOptions:
    run: Path
    tagger: str | Path | None = None  # hub id or WD-format folder; None: the default WD tagger
    n: int = 10_000  # sampled faces
    tags: list[str] | None = None  # None: the run's labels the tagger knows
    threshold: float = 0.35  # a tag is on at this probability (curate tag's general threshold)
    snapshot: str | Path | None = None  # None: the run's newest
    batch: int = 32
    device: str = "auto"
    seed: int = 0
    held_out: float = 0.2  # share of each tag's positives and negatives kept out of its fit
    l2: float | None = None  # weight of ½‖β‖² beside the mean log loss (standardised w); None: chosen
    out: Path | None = None  # folder for directions.pt and .json; None: the run folder
    progress: bool = True
    tagging: Tagging | None = None  # stands in for the tagger (tests); None: load `tagger`


@dataclass
class TagFit:
    """One tag's direction and how well w predicts the tag on held-out samples."""

    name: str
    vector: torch.Tensor  # [w_dim], unit length, toward the tag
    scale: float  # standard deviation of the sampled ws along `vector`
    accuracy: float
    balanced_accuracy: float  # mean of the true-positive and true-negative rates
    auc: float
    positives: int  # of all samples
    held_out: int  # samples the figures above are measured on
    l2: float = 0.0  # the regularisation weight it was fitted with


@dataclass
class DirectionsReport:
    run: Path
    snapshot: Path | None = None
    tagger: str = ""
    samples: int = 0
    labels_from: str = ""  # where the label sets of a conditional run's samples came from
    fits: list[TagFit] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tag, why)
    not_in_tagger: list[str] = field(default_factory=list)  # run labels the tagger cannot see
    path: Path | None = None  # directions.pt
    table: Path | None = None  # directions.json
    seconds: float = 0.0
    interrupted: bool = False


def fit_directions(options: DirectionsOptions) -> DirectionsReport:
    """Sample `n` faces of the run, tag them, fit and save a direction per tag (RUN/directions.pt)."""
    import torch

    from train.directions import Directions, save_directions
    from train.inference import load_generator

    _check(options)
    gen = load_generator(options.run, options.snapshot, options.device)
    tagging = options.tagging or tagger_tagging(options.tagger, options.device)
    columns, not_in_tagger = choose_tags(options.tags, gen.label_names, tagging.names)
    report = DirectionsReport(
        run=Path(options.run), snapshot=gen.snapshot, tagger=tagging.name, not_in_tagger=not_in_tagger
    )
    rng = np.random.default_rng(options.seed)
    rows, report.labels_from = label_rows(gen, options.n, rng)
    started = time.monotonic()
    try:
        with StageProgress("directions", total=options.n, unit="faces", enabled=options.progress) as progress:
            w, probs = sample_and_tag(gen, tagging, columns, rows, options, progress)
        report.samples = len(w)
        positive = probs >= options.threshold
        floor = max(MIN_POSITIVES, int(np.ceil(MIN_SHARE * len(w))))
        with StageProgress("fit", total=len(columns), unit="tags", enabled=options.progress) as progress:
            for k, (name, _) in enumerate(columns):
                count = int(positive[:, k].sum())
                if min(count, len(w) - count) < floor:
                    why = f"{count:,} of {len(w):,} samples positive; needs {floor:,} positive and negative"
                    report.skipped.append((name, why))
                else:
                    report.fits.append(fit_tag(name, w, positive[:, k], options, rng))
                progress.advance()
    except KeyboardInterrupt:  # nothing is written: a fit from part of the samples is not the one asked
        report.interrupted = True
        return report
    finally:
        report.seconds = time.monotonic() - started
    if not report.fits:
        reasons = "; ".join(f"{name}: {why}" for name, why in report.skipped)
        raise ModelError(f"no tag could be fitted from {len(w):,} samples ({reasons}): try a larger --n")
    directions = Directions(
        names=[f.name for f in report.fits],
        vectors=torch.stack([f.vector for f in report.fits]),
        scales=torch.tensor([f.scale for f in report.fits]),
        accuracy=[f.accuracy for f in report.fits],
        info=_info(report, options),
    )
    run = Path(options.run).expanduser()
    folder = Path(options.out) if options.out is not None else run if run.is_dir() else run.parent
    report.path = save_directions(folder, directions)
    report.table = write_table(folder / TABLE_FILE, report, directions.info)
    return report


def choose_tags(
    wanted: list[str] | None, label_names: list[str], vocabulary: list[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """(tag, tagger column) to fit, and the run's labels the tagger lacks (when none were asked for).

    Names match in Booru or Illustration2Vec spelling; a name the tagger lacks is an error naming the
    nearest it has."""
    index = tag_index(vocabulary)
    if wanted:
        chosen = []
        for name in wanted:
            tag = current_tag(name)
            if tag not in index:
                near = nearest_tags(tag, index)
                hint = f"; nearest: {', '.join(near)}" if near else ""
                raise InvalidArgument(
                    f"--tags {name.strip()!r}: the tagger's {len(vocabulary):,} tags do not include it{hint}"
                )
            chosen.append((vocabulary[index[tag]], index[tag]))
        return list(dict.fromkeys(chosen)), []
    if not label_names:
        raise InvalidArgument("this run is unconditional, so it has no labels to fit: name tags with --tags")
    known = [index[current_tag(n)] for n in label_names if current_tag(n) in index]
    found = [(vocabulary[column], column) for column in known]
    missing = [n for n in label_names if current_tag(n) not in index]
    if not found:
        raise InvalidArgument(
            f"none of the run's {len(label_names)} labels ({', '.join(label_names[:5])}"
            f"{' …' if len(label_names) > 5 else ''}) is in the tagger's vocabulary: name tags with --tags"
        )
    return list(dict.fromkeys(found)), missing


def label_rows(gen: TrainedGenerator, n: int, rng: np.random.Generator) -> tuple[list[list[int]], str]:
    """A label set per sample, and where they came from: the label rows of training images drawn at
    random (so combinations come as often as the generator learnt them), or one random label each
    when the training set is no longer where the snapshot says; none when unconditional."""
    from train.dataset import read_labels

    if not gen.c_dim:
        return [[] for _ in range(n)], "none (unconditional)"
    path = gen.dataset.get("path")
    try:
        labels = read_labels(path)[0][:, : gen.c_dim] if path else None
    except (InvalidArgument, OSError):
        labels = None
    if labels is not None and len(labels) and labels.shape[1] == gen.c_dim:
        picks = labels[rng.integers(0, len(labels), n)]
        return [np.flatnonzero(row > 0).tolist() for row in picks], f"training set {path}"
    where = f" ({path} is not readable)" if path else ""
    return [[int(i)] for i in rng.integers(0, gen.c_dim, n)], f"one random label per sample{where}"


def sample_and_tag(
    gen: TrainedGenerator,
    tagging: Tagging,
    columns: list[tuple[str, int]],
    rows: list[list[int]],
    options: DirectionsOptions,
    progress: StageProgress,
) -> tuple[torch.Tensor, np.ndarray]:
    """w [n, w_dim] (CPU float32, truncation 1) and the chosen tags' probabilities [n, len(columns)]."""
    import torch

    z_source = torch.Generator().manual_seed(options.seed)
    wanted = [column for _, column in columns]
    ws_all, probs_all = [], []
    for start in range(0, options.n, options.batch):
        count = min(options.batch, options.n - start)
        z = torch.randn(count, gen.z_dim, generator=z_source)
        ws = gen.ws(z, rows[start : start + count])
        images = np.concatenate(list(gen.images(ws, batch=count)))
        w = ws[:, 0].float().cpu()  # every w of a sample is the same before mixing
        probs = np.asarray(tagging.probabilities(images, w))
        if probs.shape != (count, len(tagging.names)):
            wanted_shape = (count, len(tagging.names))
            raise ModelError(f"the tagger answered {probs.shape} for {wanted_shape} (images, tags)")
        ws_all.append(w)
        probs_all.append(probs[:, wanted].astype(np.float32))
        progress.advance(count)
    return torch.cat(ws_all), np.concatenate(probs_all)


def fit_tag(
    name: str, w: torch.Tensor, positive: np.ndarray, options: DirectionsOptions, rng: np.random.Generator
) -> TagFit:
    """Logistic regression of one tag on w, fitted on a stratified share and measured on the rest."""
    import torch

    train, test = stratified_split(positive, options.held_out, rng)
    x = w.double()
    mean, std = x[train].mean(dim=0), x[train].std(dim=0)
    std = std.clamp_min(1e-8 * float(std.max()) + 1e-12)  # a constant coordinate of W carries nothing
    y = torch.from_numpy(positive.astype(np.float64))
    standard = (x - mean) / std
    l2 = options.l2 if options.l2 is not None else choose_l2(standard, y, train, positive, rng)
    beta, bias = logistic_regression(standard[train], y[train], l2)
    scores = (standard[test] @ beta + bias).numpy()
    truth = positive[test]
    guess = scores > 0
    vector = beta / std  # the boundary β·(w − m)/σ + b = 0 has normal β/σ in W
    vector = (vector / vector.norm().clamp_min(1e-12)).float()
    return TagFit(
        name=name,
        vector=vector,
        scale=float((w @ vector).std()),
        accuracy=float((guess == truth).mean()),
        balanced_accuracy=float((guess[truth].mean() + (~guess[~truth]).mean()) / 2),
        auc=roc_auc(scores, truth),
        positives=int(positive.sum()),
        held_out=len(test),
        l2=l2,
    )


def choose_l2(
    x: torch.Tensor, y: torch.Tensor, train: np.ndarray, positive: np.ndarray, rng: np.random.Generator
) -> float:
    """The L2_GRID weight whose fit on ¾ of `train` has the least log loss on the other ¼."""
    import torch.nn.functional as F

    inner, check = (train[part] for part in stratified_split(positive[train], 0.25, rng))
    losses = []
    for l2 in L2_GRID:
        beta, bias = logistic_regression(x[inner], y[inner], l2)
        losses.append(float(F.binary_cross_entropy_with_logits(x[check] @ beta + bias, y[check])))
    return L2_GRID[int(np.argmin(losses))]


def stratified_split(
    positive: np.ndarray, held_out: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out), holding out the same share of positives and of negatives."""
    fit, test = [], []
    for group in (np.flatnonzero(positive), np.flatnonzero(~positive)):
        group = rng.permutation(group)
        cut = max(1, round(held_out * len(group)))
        test.append(group[:cut])
        fit.append(group[cut:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(test))


def logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """β, b minimising mean log loss + l2/2 ‖β‖² (convex: full-batch L-BFGS finds the optimum)."""
    import torch
    import torch.nn.functional as F

    beta = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    share = float(y.mean().clamp(1e-6, 1 - 1e-6))
    # starting at the base rate's log odds: where the fit ends when w says nothing about the tag
    bias = torch.tensor(np.log(share / (1 - share)), dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [beta, bias], lr=1, max_iter=FIT_STEPS, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=20, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ beta + bias, y) + 0.5 * l2 * beta.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return beta.detach(), bias.detach()


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half)."""
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if not positives or not negatives:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # tied scores share their mean rank
    return float((ranks[positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def write_table(path: Path, report: DirectionsReport, info: dict) -> Path:
    """directions.json: each tag's figures, for people and other tools (the vectors are in the .pt)."""
    from train.runs import write_json

    tags = [
        {
            "name": f.name,
            "accuracy": round(f.accuracy, 4),
            "balanced_accuracy": round(f.balanced_accuracy, 4),
            "auc": round(f.auc, 4),
            "positives": f.positives,
            "positive_share": round(f.positives / report.samples, 4),
            "held_out": f.held_out,
            "scale": round(f.scale, 5),
            "l2": f.l2,
        }
        for f in report.fits
    ]
    keys = ("snapshot", "tagger", "n", "seed", "threshold", "labels_from", "created_at")
    skipped = [{"name": name, "why": why} for name, why in report.skipped]
    write_json(path, {**{k: info[k] for k in keys}, "tags": tags, "skipped": skipped})
    return path


def _info(report: DirectionsReport, options: DirectionsOptions) -> dict:
    """What directions.pt records about its fit (plain values: it loads weights-only)."""
    return {
        "snapshot": str(report.snapshot),
        "tagger": report.tagger,
        "n": report.samples,
        "seed": options.seed,
        "threshold": options.threshold,
        "held_out_share": options.held_out,
        "l2": {f.name: f.l2 for f in report.fits},
        "labels_from": report.labels_from,
        "positives": {f.name: f.positives for f in report.fits},
        "auc": {f.name: f.auc for f in report.fits},
        "balanced_accuracy": {f.name: f.balanced_accuracy for f in report.fits},
        "skipped": dict(report.skipped),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check(options: DirectionsOptions) -> None:
    if options.n < MIN_SAMPLES:
        raise InvalidArgument(f"--n {options.n}: at least {MIN_SAMPLES} samples are needed to fit and test")
    if not 0 <= options.threshold <= 1:
        raise InvalidArgument(f"--threshold {options.threshold}: a probability, in [0, 1]")
    if not 0 < options.held_out < 1:
        raise InvalidArgument(f"held-out share {options.held_out}: between 0 and 1")
    if options.batch < 1:
        raise InvalidArgument(f"--batch {options.batch}: at least 1")
