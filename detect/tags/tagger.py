"""The WD tagger v3 family (and taggers trained here) through timm: loading, preprocessing, prediction.

A tagger is a folder in the WD on-disk format: `config.json` (timm's hub config, with the model's own
input size, mean and std), `model.safetensors` (or `pytorch_model.bin`, what timm's `save_for_hf` writes
without safe serialization), and `selected_tags.csv` (`tag_id,name,category,count`; category 9 is the
rating, 0 general, 4 character). A hub id is first fetched into such a folder
(`curate.registry.resolve_hub_folder`), so hub models and local folders load through the same code.
"""

from __future__ import annotations

import csv
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate import registry
from curate.device import pick_device
from curate.errors import InvalidArgument, ModelError

TAGGER_FILES = ("config.json", "model.safetensors", "selected_tags.csv")  # as the hub's WD taggers ship
# either holds the weights, the first preferred (timm's local-dir loading takes them in this order, the
# pickle with torch.load(weights_only=True): tensors only, no arbitrary objects are unpickled)
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_TAGGER = "SmilingWolf/wd-vit-tagger-v3"
GENERAL, CHARACTER, RATING = 0, 4, 9  # selected_tags.csv categories
RATINGS = ("general", "sensitive", "questionable", "explicit")


@dataclass(frozen=True)
class TagList:
    """The model's outputs, in order: each tag's name and category."""

    names: tuple[str, ...]
    categories: np.ndarray  # int, one per name

    def __post_init__(self) -> None:
        # looked up for every face the tagger reads: computed once here
        by_category = {int(c): np.flatnonzero(self.categories == c) for c in np.unique(self.categories)}
        object.__setattr__(self, "_by_category", by_category)
        object.__setattr__(self, "_not_rating", np.flatnonzero(self.categories != RATING))

    def indices(self, category: int) -> np.ndarray:
        return self._by_category.get(category, np.empty(0, dtype=np.int64))

    def not_ratings(self) -> np.ndarray:
        return self._not_rating


def read_selected_tags(path: str | os.PathLike[str]) -> TagList:
    """`selected_tags.csv` as a TagList; ModelError when it is missing or malformed."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        names = tuple(row["name"] for row in rows)
        categories = np.array([int(row["category"]) for row in rows], dtype=np.int64)
    except FileNotFoundError:
        raise ModelError(f"tag list not found: {path}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path} is not a tag list with name and category columns: {exc}") from None
    if not names:
        raise ModelError(f"{path} lists no tags")
    return TagList(names, categories)


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: a side in pixels, the normalisation of its config, the channel order."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = True  # the WD taggers were trained on BGR

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image as a 3×size×size float32 array: alpha on white, padded white square, bicubic."""
        from PIL import Image

        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        else:
            image = image.convert("RGB")
        side = max(image.size)
        if image.size != (side, side):
            square = Image.new("RGB", (side, side), (255, 255, 255))
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        if side != self.size:
            image = image.resize((self.size, self.size), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.bgr:
            pixels = pixels[:, :, ::-1]  # normalised in RGB as the config gives it, then reordered
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def check_tagger_folder(folder: Path) -> Path:
    """The folder, if it holds every file of the WD format; ModelError naming what is missing."""
    if not folder.is_dir():
        raise ModelError(f"tagger folder not found: {folder}")
    wanted = [WEIGHTS_FILES if name in WEIGHTS_FILES else (name,) for name in TAGGER_FILES]
    missing = [" or ".join(names) for names in wanted if not any((folder / n).is_file() for n in names)]
    if missing:
        raise ModelError(f"{folder} is not a tagger folder: it lacks {', '.join(missing)}")
    return folder


def _refused_pickle(path: Path) -> str:
    """Why a pickled checkpoint did not load: the objects in it that weights_only would not make."""
    import torch

    try:  # reads the pickle's opcodes; unpickles nothing
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # an older torch, or a pickle too broken to list
        found = []
    objects = f" ({', '.join(found[:4])})" if found else ""
    return (
        f"{path} holds pickled objects{objects} besides tensors and is not unpickled (only weights are "
        f"loaded from a pickle): save the state dict alone, or as {WEIGHTS_FILES[0]}"
    )


def resolve_tagger(model: str | os.PathLike[str] | None) -> Path:
    """A local folder as it is; a hub id (`owner/name[@revision]`) fetched into the cache first."""
    model = DEFAULT_TAGGER if model is None else model
    local = Path(model).expanduser()
    if local.exists() or isinstance(model, Path) or str(model).startswith((".", "/", "~")):
        return check_tagger_folder(local)
    return check_tagger_folder(registry.resolve_hub_folder(str(model), TAGGER_FILES))


class Tagger:
    """A loaded tagger: batches of preprocessed arrays in, per-tag probabilities out."""

    def __init__(self, model: str | os.PathLike[str] | None = None, device: str = "auto"):
        import timm
        import torch

        self.folder = resolve_tagger(model)
        self.name = str(model) if model is not None else DEFAULT_TAGGER
        self.tags = read_selected_tags(self.folder / "selected_tags.csv")
        self.device = pick_device(device)
        try:
            network = timm.create_model(f"local-dir:{self.folder}", pretrained=True)
        except (pickle.UnpicklingError, RuntimeError, KeyError, ValueError, OSError) as exc:
            # torch.load(weights_only=True) met more than tensors (timm re-raises it as a RuntimeError)
            if pickle.UnpicklingError in (type(exc), type(exc.__cause__)):
                raise ModelError(_refused_pickle(self.folder / WEIGHTS_FILES[1])) from None
            raise ModelError(f"{self.folder} does not load as a timm model: {exc}") from exc
        if network.num_classes != len(self.tags.names):
            raise ModelError(
                f"{self.folder}: the model has {network.num_classes} outputs but selected_tags.csv "
                f"lists {len(self.tags.names)} tags"
            )
        config = network.pretrained_cfg
        size = config.get("input_size", (3, 448, 448))
        self.preprocess = Preprocessing(
            size=int(size[-1]), mean=tuple(config.get("mean")), std=tuple(config.get("std"))
        )
        self.network = network.eval().to(self.device)
        self._amp = self.device.type == "cuda"
        if self._amp:
            self.network.to(memory_format=torch.channels_last)
        self._torch = torch

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Sigmoid probabilities, N×tags float32, for an N×3×S×S batch from `preprocess`."""
        return self._forward(batch, pre_logits=False)

    def features(self, batch: np.ndarray) -> np.ndarray:
        """The pooled features the head reads (timm's pre-logits), N×F float32, for a batch as `predict`'s."""
        return self._forward(batch, pre_logits=True)

    def _forward(self, batch: np.ndarray, *, pre_logits: bool) -> np.ndarray:
        torch = self._torch
        if batch.ndim != 4 or batch.shape[1:] != (3, self.input_size, self.input_size):
            raise InvalidArgument(
                f"expected N×3×{self.input_size}×{self.input_size} input, got {tuple(batch.shape)}"
            )
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
            if self._amp:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
                # what forward() does, split so the pooled features can be had without the head
                out = self.network.forward_head(self.network.forward_features(pixels), pre_logits=pre_logits)
            out = out.float()
            return (out if pre_logits else torch.sigmoid(out)).cpu().numpy()


@dataclass(frozen=True)
class Thresholds:
    """Tags kept as labels (general ≥ 0.35, character ≥ 0.85), and the floor for storing a probability."""

    general: float = 0.35
    character: float = 0.85
    floor: float = 0.05

    def __post_init__(self) -> None:
        if not all(0 <= v <= 1 for v in (self.general, self.character, self.floor)):
            raise InvalidArgument("tag thresholds and the floor must be in [0, 1]")
        if self.floor > min(self.general, self.character):
            raise InvalidArgument("the probability floor must not exceed the thresholds")


@dataclass(frozen=True)
class Prediction:
    """One image's tags: labels above the thresholds, the rating, every probability above the floor."""

    general: list[str]
    character: list[str]
    rating: str | None
    rating_score: float | None
    scored: list[tuple[str, float]]  # (tag, probability) ≥ floor, most probable first, ratings excluded


def read_prediction(probs: np.ndarray, tags: TagList, thresholds: Thresholds) -> Prediction:
    """Split one row of probabilities by category and threshold."""

    def above(category: int, cut: float) -> list[str]:
        index = tags.indices(category)
        index = index[probs[index] >= cut]
        return [tags.names[i] for i in index[np.argsort(-probs[index], kind="stable")]]

    ratings = tags.indices(RATING)
    rating, rating_score = None, None
    if len(ratings):
        best = ratings[int(np.argmax(probs[ratings]))]
        rating, rating_score = _rating_word(tags.names[best]), float(probs[best])
    scored_index = tags.not_ratings()
    scored_index = scored_index[probs[scored_index] >= thresholds.floor]
    scored_index = scored_index[np.argsort(-probs[scored_index], kind="stable")]
    return Prediction(
        general=above(GENERAL, thresholds.general),
        character=above(CHARACTER, thresholds.character),
        rating=rating,
        rating_score=rating_score,
        scored=[(tags.names[i], float(probs[i])) for i in scored_index],
    )


def _rating_word(name: str) -> str:
    """WD names ratings general/sensitive/questionable/explicit; older lists say rating:safe and so on."""
    word = name.removeprefix("rating:").removeprefix("rating_")
    return {"safe": "general", "s": "general", "q": "questionable", "e": "explicit"}.get(word, word)


def preprocess_files(paths: Sequence[Path], preprocessing: Preprocessing) -> np.ndarray:
    """Open and preprocess several files into one batch (used by the batch-1 baseline and tests)."""
    from PIL import Image

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(preprocessing(image))
    return np.stack(arrays)
