"""The filter's fine-tuned score: the embedding's network, fine-tuned on the seed crops' pixels.

As EDITH's metric learning does, the seeds teach the network itself, not only a rule over its frozen
embedding: a copy of the workspace's instance-discrimination backbone (models/embed/last.pt) gets a
linear head on its pooled features and is trained a few epochs on the seed crops (good 1, bad 0,
class-balanced log loss) under the embedding's own training augmentations, with a small learning rate
for the backbone and a larger one for the head. Its BatchNorm keeps the checkpoint's statistics: a
few dozen seeds in batches of 16 are too few to re-estimate them. Every face's score is the
fine-tuned probability on its whole crop (the embedding's eval transform).

The threshold is honest: it is chosen on the seeds' held-out probabilities, each from one of FOLDS
fine-tunes (stratified folds) that never saw that seed, so the cost is FOLDS + 1 fine-tunes. All of it
is seeded, so the same seeds give the same scores (on CPU: the chip's kernels may differ elsewhere).
Measured (tests/bench/review.py, two seeds): it ranked faces best on one seed, no better on the other,
and the fold fine-tunes' held-out probabilities are noisy, so its cut is often off. 6 fine-tunes of
resnet18 at 64 px on one thread take ~11 s for 20 seeds, ~32 s for 60 (they grow with the seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument
from curate.workspace import Workspace

FOLDS = 5  # fine-tunes for the held-out probabilities that choose the threshold (fewer with few seeds)
EPOCHS = 8  # passes over the seeds per fine-tune
BATCH = 16
BACKBONE_LR = 1e-3  # AdamW; of 3e-4, 1e-3 and head-only (0), 1e-3 ranked the open faces best
HEAD_LR = 1e-2
WEIGHT_DECAY = 1e-4
SEED = 0


@dataclass
class FinetunedScore:
    scores: np.ndarray  # per row: the fine-tuned probability that the face is good (NaN: no crop)
    held_out: np.ndarray  # per row: a seed's probability from the fine-tune whose fold held it out
    signals: list[str]  # what was fine-tuned, for the manifest: ["finetuned:<model>"]
    l2: float | None = None  # (the learned score's field; none here)
    seconds: float = 0.0


def finetune_scores(
    ws: Workspace, model: str, ids: list[str], paths: list[str | None], seeds: np.ndarray
) -> FinetunedScore:
    """Fine-tune `model`'s checkpoint on the seeds (label 1 good, 0 bad, −1 none) and score every row;
    `paths` are the rows' crops relative to the workspace (None: a row with no crop, left NaN)."""
    import time

    import torch

    start = time.perf_counter()
    saved, settings = _checkpoint(ws, model)
    rows = np.flatnonzero(seeds >= 0)
    cropless = [ids[r] for r in rows if paths[r] is None]
    if cropless:
        raise InvalidArgument(
            f"the finetuned score trains on the seeds' crops, and {len(cropless)} seeds have none "
            f"(e.g. {cropless[0]}; example images from a folder): give face ids, or use --score learned"
        )
    train_tf, eval_tf = _transforms(saved, settings)
    images = [_open(ws.root / paths[r]) for r in rows]
    y = (seeds[rows] == 1).astype(np.float32)
    evaluated = torch.stack([eval_tf(image) for image in images])
    held = np.full(len(seeds), np.nan)
    folds = stratified_folds(y, FOLDS)
    for fold in range(int(folds.max()) + 1):
        test = folds == fold
        kept = [image for image, out in zip(images, test, strict=True) if not out]
        network = _finetune(saved, train_tf, kept, y[~test], fold + 1)
        held[rows[test]] = _predict(network, evaluated[torch.from_numpy(test)])
    network = _finetune(saved, train_tf, images, y, 0)
    scores = np.full(len(seeds), np.nan)
    scores[: len(paths)] = _score_crops(ws, network, eval_tf, paths)
    return FinetunedScore(scores, held, [f"finetuned:{model}"], None, time.perf_counter() - start)


def stratified_folds(y: np.ndarray, folds: int) -> np.ndarray:
    """Each seed's fold: good and bad seeds dealt in turn after a seeded shuffle, so every fold holds
    both; as many folds as the smaller side has seeds, up to `folds`."""
    count = max(2, min(folds, int((y == 1).sum()), int((y == 0).sum())))
    out = np.empty(len(y), dtype=np.int64)
    rng = np.random.default_rng(SEED)
    for side in (1, 0):
        members = rng.permutation(np.flatnonzero(y == side))
        out[members] = np.arange(len(members)) % count
    return out


def _checkpoint(ws: Workspace, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint that embedded `model`'s faces and the settings load_network reports."""
    from embed.stage import model_dir
    from embed.train import CHECKPOINT, read_checkpoint

    if not model.startswith("instdisc:"):
        raise InvalidArgument(
            f"the finetuned score fine-tunes the workspace's instance-discrimination network, but the faces "
            f"are embedded by {model} (pretrained features): embed with `curate embed` (no --features), "
            "or use --score learned"
        )
    path = model_dir(ws) / CHECKPOINT
    saved = read_checkpoint(path, missing_ok=True)
    if saved is None:
        raise InvalidArgument(f"the finetuned score needs {path}, the network that embedded {model}")
    trained = f"instdisc:{saved.get('init') or saved['backbone']}"
    if trained != model:
        raise InvalidArgument(
            f"{path} holds {trained}, but the faces the filter reads are embedded by {model}: "
            "embed again, or filter with --score learned"
        )
    settings = {k: saved[k] for k in ("backbone", "dim", "size")}
    if saved.get("init"):
        settings |= {"init": saved["init"], "preprocessing": dict(saved["preprocessing"])}
    return saved, settings


def _transforms(saved: dict[str, Any], settings: dict[str, Any]) -> tuple[Any, Any]:
    """(training, eval) transforms: the embedding's own augmentations, and what embedding sees."""
    from embed.train import network_transform, training_transform

    augment = saved.get("augment", "light")
    if "preprocessing" in settings:
        import torch

        from embed.tagger_features import tagger_training_transform

        arrays = network_transform(settings)  # the tagger's preprocessing gives arrays: tensors here

        return tagger_training_transform(settings["preprocessing"], augment), (
            lambda image: torch.from_numpy(arrays(image))
        )
    return training_transform(settings["size"], augment), network_transform(settings)


def _open(path: Path) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"a seed's crop does not open: {path}: {exc}") from None


def _network(saved: dict[str, Any]) -> Any:
    """The checkpoint's backbone with a fresh linear head on its pooled features (seeded)."""
    import torch
    from torch import nn

    from embed.train import build_network

    embedding = build_network(saved["backbone"], saved["dim"], backbone_args=saved.get("backbone_args"))
    embedding.load_state_dict(saved["model"])
    backbone = embedding.backbone
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    torch.manual_seed(SEED)
    return nn.Sequential(backbone, nn.Linear(width, 1))


def _finetune(saved: dict[str, Any], train_tf: Any, images: list[Any], y: np.ndarray, run: int) -> Any:
    """A copy of the backbone and a head, trained on `images` (labels `y`), seeded by `run`."""
    import torch

    network = _network(saved)
    backbone, head = network[0], network[1]
    optimizer = torch.optim.AdamW(
        [{"params": backbone.parameters(), "lr": BACKBONE_LR}, {"params": head.parameters(), "lr": HEAD_LR}],
        weight_decay=WEIGHT_DECAY,
    )
    labels = torch.from_numpy(y)
    # balanced: good and bad seeds weigh the same in all, whatever their counts (reviews are uneven)
    weights = torch.where(
        labels == 1, 0.5 / max(float(y.sum()), 1.0), 0.5 / max(float(len(y) - y.sum()), 1.0)
    )
    weights = weights * len(y)  # mean 1 over the seeds
    generator = torch.Generator().manual_seed(SEED * 1_000 + run)
    torch.manual_seed(SEED * 1_000 + run)  # the augmentations draw from torch's global generator
    network.eval()  # BatchNorm keeps the checkpoint's statistics (see the module docstring)
    for _ in range(EPOCHS):
        order = torch.randperm(len(images), generator=generator)
        for chunk in order.split(BATCH):
            pixels = torch.stack([train_tf(images[i]) for i in chunk.tolist()])
            logits = network(pixels).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels[chunk], weight=weights[chunk]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return network


def _predict(network: Any, pixels: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(network(pixels).squeeze(1)).double().numpy()


def _score_crops(ws: Workspace, network: Any, transform: Any, paths: list[str | None]) -> np.ndarray:
    """The fine-tuned probability of every row's crop (NaN where it has none or it does not decode)."""
    from curate.imagefiles import image_batches

    out = np.full(len(paths), np.nan)
    known = [row for row, path in enumerate(paths) if path is not None]
    batches = image_batches([paths[r] for r in known], transform, batch_size=64, workers=0, root=ws.root)
    for indices, pixels, _ in batches:
        if indices:
            out[[known[i] for i in indices]] = _predict(network, pixels)
    return out
