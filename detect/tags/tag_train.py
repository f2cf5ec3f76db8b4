"""`curate tag-train`: fine-tune a timm backbone on the face crops with their posts' booru tags.

The result is a tagger folder in the WD format (config.json, model.safetensors, selected_tags.csv), so
`curate tag --model FOLDER` loads it through the same code as the WD models. Each epoch is written to
`epoch-NNN/`, then `last/` (and `best/`, by held-out mAP) are swapped in; `state.pt` holds the optimiser
and the epoch, so a killed run resumes at its last whole epoch. Batch order and flips are a function of
(seed, epoch), so a resumed run sees the data a run that never stopped would have seen.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.device import pick_device
from curate.errors import CurateError, InvalidArgument, ModelError
from curate.imagefiles import image_batches
from curate.manifest import face_crops
from curate.metrics import average_precision, micro_f1
from curate.progress import StageProgress
from curate.shard import held_out
from curate.tagnames import canonical_tag
from curate.workspace import Workspace
from detect.tags.tag import booru_tags
from detect.tags.tagger import CHARACTER, GENERAL, Preprocessing

log = logging.getLogger(__name__)

STATE = "state.pt"
LOSSES = ("asl", "bce")


@dataclass
class TagTrainOptions:
    backbone: str = "resnet50"  # any timm model name
    pretrained: bool = False  # the backbone's timm weights (from the hub: needs network or its cache)
    size: int = 224  # input side
    top: int = 256  # vocabulary: the most frequent booru tags... (ignored with `labels`)
    min_count: int = 5  # ...on at least this many training faces
    labels: list[str] | None = None  # or exactly these tags (e.g. the workspace's labels.json)
    loss: str = "asl"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    val_fraction: float = 0.1  # held-out images, by a stable hash of the image id
    threshold: float = 0.35  # for the F1 reported
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    out: Path | None = None  # default <workspace>/models/tagger
    force: bool = False
    progress: bool = True


@dataclass
class EpochResult:
    epoch: int
    loss: float  # mean training loss of the epoch
    val_map: float | None  # mean AP over labels with a held-out positive
    val_f1: float | None  # micro F1 at `threshold`


@dataclass
class TagTrainReport:
    out: Path
    labels: list[str]
    train_faces: int
    val_faces: int
    epochs: list[EpochResult] = field(default_factory=list)
    resumed_from: int = 0
    best: Path | None = None
    last: Path | None = None

    @property
    def up_to_date(self) -> bool:
        return bool(self.epochs) and self.resumed_from == self.epochs[-1].epoch


@dataclass(frozen=True)
class Sample:
    face_id: str
    image_id: str
    path: str
    tags: frozenset[str]  # canonical booru tags (general and character)


def training_samples(ws: Workspace) -> tuple[list[Sample], dict[str, int]]:
    """Every cropped face with its post's booru tags, and each tag's category (general or character)."""
    crops = face_crops(ws)
    if not crops:
        raise InvalidArgument(f"{ws.root} has no face crops: run `curate crop` first")
    booru = booru_tags(ws, {crop.image_id for crop in crops})
    categories: dict[str, int] = {}
    samples = []
    for crop in crops:
        posts = booru.get(crop.image_id, {})
        tags = set()
        for name, category in (("general", GENERAL), ("character", CHARACTER)):
            for tag in map(canonical_tag, posts.get(name, [])):
                categories.setdefault(tag, category)
                tags.add(tag)
        samples.append(Sample(crop.face_id, crop.image_id, crop.path, frozenset(tags)))
    return samples, categories


def split_by_image(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): faces of one image stay together; nothing is held out under 10 samples."""
    if fraction <= 0 or len(samples) < 10:
        return samples, []
    held = [held_out(s.image_id, fraction) for s in samples]
    train = [s for s, h in zip(samples, held, strict=True) if not h]
    val = [s for s, h in zip(samples, held, strict=True) if h]
    return (train, val) if train and val else (samples, [])


def choose_vocabulary(train: list[Sample], options: TagTrainOptions) -> list[str]:
    """The given labels, or the `top` tags on at least `min_count` training faces."""
    counts = Counter(tag for sample in train for tag in sample.tags)
    if options.labels is not None:
        labels = list(dict.fromkeys(canonical_tag(t) for t in options.labels))
        unseen = [t for t in labels if not counts[t]]
        if unseen:
            log.warning("%d labels are on no training face: %s", len(unseen), ", ".join(unseen[:10]))
        return labels
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [tag for tag, n in ranked if n >= options.min_count][: options.top]


def train_tagger(workspace: str | Path, options: TagTrainOptions | None = None) -> TagTrainReport:
    """Fine-tune (or go on fine-tuning) a tagger on the workspace's crops and booru tags."""
    options = options or TagTrainOptions()
    _check(options)
    ws = Workspace.open(workspace)
    out = Path(options.out) if options.out is not None else ws.models / "tagger"
    samples, categories = training_samples(ws)
    train, val = split_by_image(samples, options.val_fraction)
    if options.force and out.exists():
        shutil.rmtree(out)
    state = _read_state(out)
    labels = state["labels"] if state else choose_vocabulary(train, options)
    if not labels:
        raise InvalidArgument(
            f"no booru tag is on {options.min_count} or more of the {len(train)} training faces: "
            "lower --min-count, or crawl with tags"
        )
    report = TagTrainReport(out, labels, len(train), len(val))
    run = _Run.start(out, labels, categories, options, state)
    report.resumed_from = run.epoch
    report.epochs = [EpochResult(**e) for e in run.history]
    if run.epoch < options.epochs:
        targets = _targets(train, labels)
        val_targets = _targets(val, labels)
        steps = math.ceil(len(train) / options.batch_size) * (options.epochs - run.epoch)
        with StageProgress("tag-train", total=steps, unit="steps", enabled=options.progress) as bar:
            while run.epoch < options.epochs:
                loss = run.train_epoch(ws.root, train, targets, bar.advance)
                val_map, val_f1 = run.evaluate(ws.root, val, val_targets) if val else (None, None)
                result = EpochResult(run.epoch, loss, val_map, val_f1)
                report.epochs.append(result)
                run.save(result)
    report.last = out / "last"
    report.best = out / "best" if (out / "best").is_dir() else None
    return report


def _check(options: TagTrainOptions) -> None:
    if options.loss not in LOSSES:
        raise InvalidArgument(f"--loss must be one of {', '.join(LOSSES)}, got {options.loss!r}")
    if options.epochs < 1 or options.batch_size < 1 or options.size < 16 or options.lr <= 0:
        raise InvalidArgument("epochs and batch size must be ≥ 1, size ≥ 16 and the learning rate > 0")
    if not 0 <= options.val_fraction < 1:
        raise InvalidArgument(f"--val-fraction must be in [0, 1), got {options.val_fraction}")


def _targets(samples: list[Sample], labels: list[str]) -> np.ndarray:
    index = {tag: i for i, tag in enumerate(labels)}
    targets = np.zeros((len(samples), len(labels)), dtype=np.float32)
    for row, sample in enumerate(samples):
        for tag in sample.tags:
            if tag in index:
                targets[row, index[tag]] = 1.0
    return targets


def _read_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE
    if not path.is_file():
        return None
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path} is not a tag-train state: {exc}; use --force to start again") from exc


class _Run:
    """The network, optimiser and schedule of one training run, fresh or resumed from state.pt."""

    def __init__(self, out: Path, labels: list[str], categories: dict[str, int], options: TagTrainOptions):
        self.out, self.labels, self.categories, self.options = out, labels, categories, options
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, int] | None = None  # (val mAP, epoch)
        self.device: Any = None
        self._amp = False
        self.network: Any = None
        self.optimizer: Any = None
        self.criterion: Any = None
        self.preprocess = Preprocessing(options.size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

    @classmethod
    def start(
        cls,
        out: Path,
        labels: list[str],
        categories: dict[str, int],
        options: TagTrainOptions,
        state: dict[str, Any] | None,
    ) -> _Run:
        import timm
        import torch

        run = cls(out, labels, categories, options)
        run.device = pick_device(options.device)
        if state is not None:
            if state["backbone"] != options.backbone:
                raise InvalidArgument(
                    f"{out} holds a {state['backbone']} run; pass --backbone {state['backbone']} or --force"
                )
            run.categories = dict(state["categories"])
            network = timm.create_model(f"local-dir:{out / state['folder']}", pretrained=True)
        else:
            torch.manual_seed(options.seed)
            try:
                network = _create(options.backbone, options.pretrained, len(labels), options.size)
            except RuntimeError as exc:  # unknown name
                raise InvalidArgument(f"--backbone {options.backbone!r}: {exc}") from None
            except Exception as exc:  # weights that cannot be fetched (offline, no cache)
                raise ModelError(
                    f"the pretrained weights of {options.backbone} are not available: {exc}"
                ) from exc
        run.network = network.to(run.device)
        run._amp = run.device.type == "cuda"
        config = network.pretrained_cfg
        run.preprocess = Preprocessing(options.size, tuple(config["mean"]), tuple(config["std"]))
        run.optimizer = torch.optim.AdamW(
            network.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        if options.loss == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            run.criterion = AsymmetricLossMultiLabel(
                gamma_neg=4, gamma_pos=0, clip=0.05, reduction="batchmean"
            )
        else:
            run.criterion = torch.nn.BCEWithLogitsLoss()
        if state is not None:
            run.optimizer.load_state_dict(state["optimizer"])
            run.epoch = int(state["epoch"])
            run.history = list(state["history"])
            run.best = tuple(state["best"]) if state.get("best") else None
        return run

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up over the first epoch's worth (at most 10%), then cosine to zero."""
        warmup = max(1, min(total // 10, 500))
        if step < warmup:
            return self.options.lr * (step + 1) / warmup
        return self.options.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    def train_epoch(self, root: Path, train: list[Sample], targets: np.ndarray, advance: Any) -> float:
        import torch

        options = self.options
        order = np.random.default_rng([options.seed, self.epoch]).permutation(len(train))
        flips = np.random.default_rng([options.seed, self.epoch, 1]).random(len(train)) < 0.5
        per_epoch = math.ceil(len(train) / options.batch_size)
        total = per_epoch * options.epochs
        step = self.epoch * per_epoch
        self.network.train()
        losses = []
        batches = image_batches(
            [train[i].path for i in order], self.preprocess,
            batch_size=options.batch_size, workers=options.workers, root=root,
        )  # fmt: skip
        for indices, batch, errors in batches:
            for index, code, message in errors:
                log.warning("skipping %s: %s (%s)", train[order[index]].face_id, message, code)
            if len(indices):
                picked = order[indices]
                pixels = torch.from_numpy(batch).to(self.device)
                flip = torch.from_numpy(flips[indices]).to(self.device)
                pixels = torch.where(flip[:, None, None, None], pixels.flip(3), pixels)
                target = torch.from_numpy(targets[picked]).to(self.device)
                for group in self.optimizer.param_groups:
                    group["lr"] = self.lr_at(step, total)
                with torch.autocast(
                    self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
                ):
                    logits = self.network(pixels)
                loss = self.criterion(logits.float(), target)
                if not torch.isfinite(loss):
                    raise CurateError("tag-train diverged (a non-finite loss): lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
            step += 1
            advance(1)
        self.epoch += 1
        return float(np.mean(losses)) if losses else math.nan

    def evaluate(self, root: Path, val: list[Sample], targets: np.ndarray) -> tuple[float | None, float]:
        import torch

        self.network.eval()
        scores = np.zeros_like(targets)
        seen = np.zeros(len(val), dtype=bool)
        with torch.inference_mode():
            batches = image_batches(
                [s.path for s in val], self.preprocess,
                batch_size=self.options.batch_size, workers=self.options.workers, root=root,
            )  # fmt: skip
            for indices, batch, _ in batches:
                if len(indices):
                    logits = self.network(torch.from_numpy(batch).to(self.device))
                    scores[indices] = torch.sigmoid(logits.float()).cpu().numpy()
                    seen[indices] = True
        ap = average_precision(scores[seen], targets[seen])
        val_map = float(np.nanmean(ap)) if np.isfinite(ap).any() else None
        return val_map, micro_f1(scores[seen], targets[seen], self.options.threshold)

    def save(self, result: EpochResult) -> None:
        """epoch-NNN/ as a tagger folder, then last/ and best/ swapped in, then state.pt."""
        import torch

        folder = f"epoch-{self.epoch:03d}"
        self._write_folder(self.out / folder)
        self.history.append(asdict(result))
        improved = result.val_map is not None and (self.best is None or result.val_map > self.best[0])
        if improved:
            self.best = (result.val_map, self.epoch)
        _swap_in(self.out / folder, self.out / "last")
        if improved:
            _swap_in(self.out / folder, self.out / "best")
        state = {
            "backbone": self.options.backbone,
            "labels": self.labels,
            "categories": self.categories,
            "folder": folder,
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "best": list(self.best) if self.best else None,
        }
        tmp = self.out / f".{STATE}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / STATE)
        for old in self.out.glob("epoch-*"):
            if old.name != folder:
                shutil.rmtree(old, ignore_errors=True)
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(result)) + "\n")

    def _write_folder(self, folder: Path) -> None:
        from timm.models import save_for_hf

        tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}")
        data = {
            "mean": self.preprocess.mean,
            "std": self.preprocess.std,
            "input_size": (3, self.options.size, self.options.size),
            "interpolation": "bicubic",
        }
        save_for_hf(self.network, str(tmp), safe_serialization=True, data_config=data)
        with open(tmp / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["tag_id", "name", "category", "count"])
            for index, tag in enumerate(self.labels):
                writer.writerow([index, tag, self.categories.get(tag, GENERAL), 0])
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)


def _create(backbone: str, pretrained: bool, classes: int, size: int) -> Any:
    """A timm model with `classes` outputs; transformers are built for `size` (their position grid)."""
    import timm

    try:
        return timm.create_model(backbone, pretrained=pretrained, num_classes=classes, img_size=size)
    except TypeError:  # convolutional networks take any size and no img_size argument
        return timm.create_model(backbone, pretrained=pretrained, num_classes=classes)


def _swap_in(source: Path, target: Path) -> None:
    """Make `target` a copy of the folder `source`, replacing it with as short a gap as two renames."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}")
    shutil.copytree(source, tmp)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:6]}")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
