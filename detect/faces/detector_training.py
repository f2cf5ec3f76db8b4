"""Train or fine-tune the Faster R-CNN face detector on COCO boxes, resumable step by step.

Everything random is a function of (seed, step): which images make up a batch, whether each is flipped,
and torch's generator (saved in every checkpoint). A run stopped at any checkpoint and resumed therefore
continues exactly where it stopped, and a later call asking for more steps carries on from `last.pt`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from curate.device import pick_device
from curate.errors import CurateError, InvalidArgument, ModelError
from curate.images import ImageCheckError
from curate.progress import StageProgress
from detect.faces.boxes import Box, iou
from detect.faces.coco import CocoImage
from detect.faces.decode import Decoded, decode

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
_MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run is declared diverged
_MIN_BOX_SIDE = 1.0  # pixels at training scale; thinner boxes make torchvision's box coder divide by ~0


@dataclass
class TrainResult:
    """What a training call did: every step's loss so far, and where its checkpoints are."""

    steps: int  # steps done in all, including earlier runs resumed from
    losses: list[float]  # total loss of each step since step 1 (NaN for a skipped non-finite step)
    last: Path  # the final checkpoint (also the one resume continues from)
    best: Path | None  # the checkpoint with the best validation AP; None without validation samples
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, AP@0.5)
    resumed_from: int = 0  # the step this call started at

    @property
    def checkpoint(self) -> Path:
        return self.last


@dataclass(frozen=True)
class Schedule:
    """mmdet's step schedule: linear warmup from `warmup_ratio`, ×0.1 at 2/3 and 8/9 of the steps."""

    lr: float
    steps: int
    warmup: int
    warmup_ratio: float = 0.001

    def at(self, step: int) -> float:
        """The learning rate of step `step` (0-based)."""
        if step < self.warmup:
            return self.lr * (self.warmup_ratio + (1 - self.warmup_ratio) * step / self.warmup)
        decays = sum(step >= m for m in (int(self.steps * 2 / 3), int(self.steps * 8 / 9)))
        return self.lr * 0.1**decays

    def state(self) -> dict[str, Any]:
        return {"kind": "warmup-multistep", **self.__dict__}


def training_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """The decode scale (≤ 1) at which the model's own resize to min_size/max_size is no shrink."""
    return min(1.0, min_size / min(width, height), max_size / max(width, height))


def boxes_for_training(
    boxes: Sequence[Box], decoded: Decoded, *, flip: bool = False, min_side: float = _MIN_BOX_SIDE
) -> np.ndarray:
    """Original-pixel boxes as N×4 float32 xyxy in the decoded copy's pixels, clipped, maybe mirrored."""
    height, width = decoded.rgb.shape[:2]
    sx, sy = width / decoded.width, height / decoded.height
    rows = []
    for box in boxes:
        x0, x1 = np.clip([box.x0 * sx, box.x1 * sx], 0, width)
        y0, y1 = np.clip([box.y0 * sy, box.y1 * sy], 0, height)
        if x1 - x0 < min_side or y1 - y0 < min_side:
            continue  # outside the image or degenerate: torchvision rejects non-positive sizes
        rows.append((width - x1, y0, width - x0, y1) if flip else (x0, y0, x1, y1))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


def decode_for_training(sample: CocoImage, min_size: int, max_size: int) -> Decoded:
    """The sample decoded so that the model sees it at about min_size (never enlarged by us)."""
    try:
        return decode(sample.path, scale_for=lambda w, h: training_scale(w, h, min_size, max_size))
    except (ImageCheckError, OSError) as exc:
        raise InvalidArgument(f"image {sample.path} does not decode: {exc}") from exc


def load_training_image(
    sample: CocoImage, min_size: int, max_size: int, *, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(H×W×3 uint8 RGB at training scale, N×4 boxes in its pixels), mirrored when `flip`."""
    decoded = decode_for_training(sample, min_size, max_size)
    boxes = boxes_for_training(sample.boxes, decoded, flip=flip)
    rgb = np.ascontiguousarray(decoded.rgb[:, ::-1]) if flip else decoded.rgb
    return rgb, boxes


def _writable(array: np.ndarray) -> np.ndarray:
    """torch wants writable memory; Pillow's arrays are read-only views."""
    return array if array.flags.writeable else array.copy()


class BatchPlan:
    """Which samples (and flips) make up step s: epochs are seeded permutations, so any step is known."""

    def __init__(self, count: int, batch_size: int, seed: int, *, flip: bool = True):
        self.count, self.batch_size, self.seed, self.flip = count, batch_size, seed, flip
        self._order = lru_cache(maxsize=4)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.count)

    def batch(self, step: int) -> list[tuple[int, bool]]:
        """(sample index, flipped) for each image of step `step` (0-based)."""
        picks = []
        for slot in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, position = divmod(slot, self.count)
            flipped = self.flip and bool(np.random.default_rng([self.seed, 1, slot]).random() < 0.5)
            picks.append((int(self._order(epoch)[position]), flipped))
        return picks


def average_precision(
    detections: Sequence[Sequence[Box]],
    truths: Sequence[Sequence[Box]],
    *,
    iou_threshold: float = 0.5,
    ignore: Sequence[Sequence[Box]] | None = None,
) -> float:
    """VOC-style all-point AP over images: each true box matches at most one detection, best score first."""
    total = sum(len(t) for t in truths)
    if total == 0:
        return 0.0
    ranked = sorted(
        ((b.score, i, b) for i, boxes in enumerate(detections) for b in boxes), key=lambda r: -r[0]
    )
    matched: list[set[int]] = [set() for _ in truths]
    hits: list[bool] = []
    for _, image, box in ranked:
        free = [(iou(box, t), j) for j, t in enumerate(truths[image]) if j not in matched[image]]
        overlap, index = max(free, default=(0.0, -1))
        if overlap >= iou_threshold:
            matched[image].add(index)
            hits.append(True)
        elif not (ignore and any(iou(box, g) >= iou_threshold for g in ignore[image])):
            hits.append(False)  # a detection on an ignored region is neither a hit nor a miss
    if not hits:
        return 0.0
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / total
    # all-point interpolation: precision made non-increasing, integrated over recall
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * precision))


def train_detector(
    samples: Sequence[CocoImage],
    out_dir: str | Path,
    *,
    init: str | Path = "pretrained",
    steps: int = 12_000,
    batch_size: int = 2,
    lr: float | None = None,
    device: str = "auto",
    resume: bool = True,
    checkpoint_every: int = 1000,
    min_size: int = 800,
    max_size: int = 1333,
    val_samples: Sequence[CocoImage] | None = None,
    seed: int = 0,
    progress: bool = True,
    warmup: int | None = None,
    rois_per_image: int = 512,
    clip_norm: float = 10.0,
    flip: bool = True,
) -> TrainResult:
    """Train for `steps` steps in all (resuming `out_dir/last.pt` when `resume`), checkpointing as it goes.

    `init` is "pretrained" (fine-tune hysts' model from the registry), "scratch" (random weights with
    trainable BatchNorm) or a checkpoint path. `lr` defaults to mmdet's 0.02 per 16 images.
    """
    _check_arguments(samples, steps, batch_size, checkpoint_every)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lr = lr if lr is not None else 0.02 * batch_size / 16
    schedule = Schedule(lr, steps, warmup if warmup is not None else min(500, max(1, steps // 10)))

    run = _Run.start(out_dir, init=init, resume=resume, seed=seed, min_size=min_size, max_size=max_size)
    run.prepare(pick_device(device), rois_per_image=rois_per_image)
    if run.step < steps:
        plan = BatchPlan(len(samples), batch_size, seed, flip=flip)
        with StageProgress("train", total=steps - run.step, unit="steps", enabled=progress) as bar:
            run.loop(
                samples, plan, schedule, steps, checkpoint_every, val_samples, clip_norm, advance=bar.advance
            )
    best = out_dir / BEST if run.validation and (out_dir / BEST).is_file() else None
    return TrainResult(run.step, list(run.losses), out_dir / LAST, best, list(run.validation), run.started_at)


def _check_arguments(
    samples: Sequence[CocoImage], steps: int, batch_size: int, checkpoint_every: int
) -> None:
    if not samples:
        raise InvalidArgument("no training images")
    if steps < 1 or batch_size < 1 or checkpoint_every < 1:
        raise InvalidArgument("steps, batch size and checkpoint interval must all be at least 1")


class _Run:
    """The model, optimiser and bookkeeping of one training run, from a fresh start or from last.pt."""

    def __init__(self, out_dir: Path, model: Any, config: dict[str, Any], seed: int):
        self.out_dir, self.model, self.config, self.seed = out_dir, model, config, seed
        self.step = 0
        self.started_at = 0
        self.losses: list[float] = []
        self.validation: list[tuple[int, float]] = []
        self.saved: dict[str, Any] | None = None  # the checkpoint resumed from, until prepare() uses it
        self.optimizer: Any = None
        self.scaler: Any = None
        self.device: Any = None

    @classmethod
    def start(
        cls, out_dir: Path, *, init: str | Path, resume: bool, seed: int, min_size: int, max_size: int
    ) -> _Run:
        """Resume last.pt when asked and present, else initialise as `init` says."""
        import torch

        from detect.faces.frcnn import FORMAT, build_model, load_model, model_from_checkpoint, read_checkpoint

        sizes = {"min_size": min_size, "max_size": max_size}
        last = out_dir / LAST
        if resume and last.is_file():
            saved = read_checkpoint(last)
            if not isinstance(saved, dict) or saved.get("format") != FORMAT:
                raise ModelError(f"{last} is not a {FORMAT} checkpoint; move it away or pass resume=False")
            model, info = model_from_checkpoint(saved, last, **sizes)
            run = cls(out_dir, model, info["config"], seed)
            run.saved = saved
            run.step = run.started_at = int(saved["step"])
            run.losses = [float(x) for x in saved.get("losses", [])]
            run.validation = [(int(s), float(v)) for s, v in saved.get("validation", [])]
            log.info("resuming %s at step %d", last, run.step)
            return run
        torch.manual_seed(seed)  # the scratch initialisation and the samplers' draws
        if init == "scratch":
            config = {"trainable_norm": True, **sizes}
            return cls(out_dir, build_model(**config), config, seed)
        model, info = load_model(None if init == "pretrained" else init, **sizes)
        return cls(out_dir, model, info["config"], seed)

    def prepare(self, device: Any, *, rois_per_image: int) -> None:
        """Move to `device`, freeze what mmdet freezes, build the optimiser and restore saved state."""
        import torch

        self.device = device
        model = self.model
        model.roi_heads.fg_bg_sampler.batch_size_per_image = rois_per_image
        if not self.config.get("trainable_norm"):
            # mmdet's frozen_stages=1: with frozen norms, the stem and first stage stay as pretrained
            for name, parameter in model.backbone.body.named_parameters():
                if name.startswith(("conv1.", "layer1.")):
                    parameter.requires_grad_(False)
        model.to(device).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=0.0, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        if self.saved is not None:
            self._restore(self.saved)
            self.saved = None

    def _restore(self, saved: dict[str, Any]) -> None:
        import torch

        if saved.get("optimizer"):
            self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        rng = saved.get("rng") or {}
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])

    def loop(
        self,
        samples: Sequence[CocoImage],
        plan: BatchPlan,
        schedule: Schedule,
        steps: int,
        checkpoint_every: int,
        val_samples: Sequence[CocoImage] | None,
        clip_norm: float,
        advance: Callable[[int], None],
    ) -> None:
        """Run steps until `steps`, decoding the next batch in threads while this one trains."""
        min_size, max_size = self.config["min_size"], self.config["max_size"]
        bad = 0
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="train-io") as pool:

            def submit(step: int) -> list[Future]:
                return [
                    pool.submit(load_training_image, samples[i], min_size, max_size, flip=f)
                    for i, f in plan.batch(step)
                ]

            pending = submit(self.step)
            while self.step < steps:
                batch = [f.result() for f in pending]
                if self.step + 1 < steps:
                    pending = submit(self.step + 1)
                loss = self._train_step(batch, schedule.at(self.step), clip_norm)
                bad = 0 if math.isfinite(loss) else bad + 1
                if bad >= _MAX_BAD_STEPS:
                    raise CurateError(f"training diverged: {bad} non-finite losses in a row; lower the lr")
                self.losses.append(loss)
                self.step += 1
                advance(1)
                if self.step % checkpoint_every == 0 or self.step == steps:
                    self._checkpoint(schedule, checkpoint_every, val_samples)

    def _train_step(self, batch: list[tuple[np.ndarray, np.ndarray]], lr: float, clip_norm: float) -> float:
        """One SGD step on a batch; a non-finite loss changes nothing and is returned as NaN."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, targets = self._tensors(batch)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            losses = self.model(images, targets)
        loss = sum(losses.values())
        value = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(value):
            return math.nan
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def _tensors(self, batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[list[Any], list[dict[str, Any]]]:
        import torch

        images, targets = [], []
        for rgb, boxes in batch:
            pixels = torch.from_numpy(_writable(rgb)).to(self.device, non_blocking=True)
            images.append(pixels.permute(2, 0, 1).float().div_(255.0))
            box_t = torch.from_numpy(boxes).to(self.device)
            labels = torch.ones(len(boxes), dtype=torch.int64, device=self.device)
            targets.append({"boxes": box_t, "labels": labels})
        return images, targets

    def _checkpoint(
        self, schedule: Schedule, checkpoint_every: int, val_samples: Sequence[CocoImage] | None
    ) -> None:
        """Validate (when asked), then write the step snapshot, last.pt, and best.pt when it improved."""
        improved = False
        if val_samples:
            score = evaluate(self.model, val_samples, self.config["min_size"], self.config["max_size"])
            improved = all(score > s for _, s in self.validation)
            self.validation.append((self.step, score))
            log.info("step %d: validation AP@0.5 %.4f", self.step, score)
        names = [LAST]
        if self.step % checkpoint_every == 0:
            names.insert(0, f"step-{self.step:07d}.pt")
        if improved:
            names.append(BEST)
        first = self._save(self.out_dir / names[0], schedule)
        for name in names[1:]:
            _same_file(first, self.out_dir / name)

    def _save(self, path: Path, schedule: Schedule) -> Path:
        import torch

        from detect.faces.frcnn import save_checkpoint

        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }
        return save_checkpoint(
            path,
            self.model,
            self.config,
            step=self.step,
            optimizer=self.optimizer,
            scheduler=schedule.state(),
            losses=self.losses,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=rng,
            validation=[list(v) for v in self.validation],
            seed=self.seed,
        )


def _same_file(source: Path, target: Path) -> None:
    """Make `target` a second name of `source` (a copy where hard links fail), atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    try:
        try:
            os.link(source, tmp)  # a checkpoint is hundreds of MB: no need to write it twice
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def evaluate(model: Any, samples: Sequence[CocoImage], min_size: int, max_size: int) -> float:
    """AP@0.5 of `model` on `samples` (decoded as in training, boxes compared in original pixels)."""
    import torch

    was_training = model.training
    device = next(model.parameters()).device
    found, truths, ignore = [], [], []
    model.eval()
    try:
        with torch.inference_mode():
            for sample in samples:
                decoded = decode_for_training(sample, min_size, max_size)
                rgb = decoded.rgb
                pixels = torch.from_numpy(_writable(rgb)).to(device).permute(2, 0, 1).float().div_(255.0)
                output = model([pixels])[0]
                sx, sy = decoded.width / rgb.shape[1], decoded.height / rgb.shape[0]
                boxes = output["boxes"].float().cpu().numpy() * np.array([sx, sy, sx, sy])
                scores = output["scores"].float().cpu().tolist()
                found.append([Box(*map(float, b), score=s) for b, s in zip(boxes, scores, strict=True)])
                truths.append(sample.boxes)
                ignore.append(sample.ignore)
    finally:
        model.train(was_training)
    return average_precision(found, truths, ignore=ignore)
