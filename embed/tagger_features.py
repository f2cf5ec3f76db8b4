"""The WD tagger as an embedding: its pooled features (`--features tagger[:MODEL]`), or its backbone as
the start of instance discrimination (`--init tagger[:MODEL]`).

Both load the tagger through `detect.tags.tagger.Tagger`, the loader `curate tag` runs (WD folder
checks, timm's local-dir loading, pickles read with weights_only), and both feed it what `curate tag`
feeds it: its own preprocessing (white square padding, bicubic resize, its config's mean and std, BGR).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument, ModelError
from curate.images import flat_rgb

TAGGER = "tagger"


def tagger_spec(value: str, option: str) -> str:
    """`tagger` or `tagger:<hub id or folder>` as `tagger:<hub id>` or `tagger:<absolute folder>`.

    The canonical form names the model so that it can be loaded again from the name alone (the filter
    embeds example folders by the manifest's model name), and a folder spelt two ways is one model.
    """
    from detect.tags.tagger import DEFAULT_TAGGER, check_tagger_folder

    kind, colon, model = value.partition(":")
    if kind != TAGGER or (colon and not model):
        raise InvalidArgument(f"{option} must be tagger or tagger:<hub id or tagger folder>, got {value!r}")
    if not model:
        return f"{TAGGER}:{DEFAULT_TAGGER}"
    local = Path(model).expanduser()
    # resolve_tagger's rule: an existing path, or one that looks like a path, is a folder
    if local.exists() or model.startswith((".", "/", "~")):
        try:
            check_tagger_folder(local)
        except ModelError as exc:
            raise InvalidArgument(f"{option} {value!r}: {exc}") from None
        return f"{TAGGER}:{local.resolve()}"
    repo = model.partition("@")[0]
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InvalidArgument(
            f"{option} {value!r}: {model!r} is neither a tagger folder nor a hub id like "
            "owner/name[@revision]"
        )
    return f"{TAGGER}:{model}"


def is_tagger(value: str | None) -> bool:
    return value is not None and value.partition(":")[0] == TAGGER


def load_tagger(spec: str, device: str = "auto") -> Any:
    """The Tagger a canonical spec names."""
    from detect.tags.tagger import Tagger

    return Tagger(spec.partition(":")[2], device)


@dataclass
class TaggerEmbedder:
    """The tagger's pooled features, L2-normalised, of batches its own preprocessing made."""

    tagger: Any

    @property
    def transform(self) -> Any:
        return self.tagger.preprocess

    @property
    def size(self) -> int:
        return self.tagger.input_size

    @property
    def dim(self) -> int:
        return int(self.tagger.network.num_features)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        features = self.tagger.features(batch)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@dataclass
class TaggerBackbone:
    """What instance discrimination takes from a tagger: its architecture, weights and preprocessing."""

    init: str  # the canonical spec
    architecture: str  # timm model name from the tagger's config.json
    args: dict[str, Any]  # timm creation arguments from the config, less the classifier's size
    preprocessing: dict[str, Any]  # Preprocessing's fields: size, mean, std, bgr
    weights: dict[str, Any] | None = None  # the backbone's state dict (the tagger without its head)


def tagger_backbone(spec: str) -> TaggerBackbone:
    """Load the tagger (on the CPU) and take its backbone: the network with its head removed."""
    from dataclasses import asdict

    from timm.models._hub import load_model_config_from_path

    tagger = load_tagger(spec, "cpu")
    _, architecture, args = load_model_config_from_path(tagger.folder)
    args = {key: value for key, value in args.items() if key != "num_classes"}
    network = tagger.network
    network.reset_classifier(0)  # the pooled features, as `features()` gives them, are what is left
    preprocessing = asdict(tagger.preprocess)
    preprocessing["mean"], preprocessing["std"] = list(preprocessing["mean"]), list(preprocessing["std"])
    return TaggerBackbone(spec, architecture, args, preprocessing, network.state_dict())


def preprocessing(fields: dict[str, Any]) -> Any:
    """The tagger's eval preprocessing from a checkpoint's record of it."""
    from detect.tags.tagger import Preprocessing

    mean, std = tuple(fields["mean"]), tuple(fields["std"])
    return Preprocessing(int(fields["size"]), mean, std, bool(fields["bgr"]))


def tagger_training_transform(fields: dict[str, Any], augment: str) -> Any:
    """The embedding's augmentations, framed as the tagger sees images: padded to a white square,
    bicubic, normalised by its config, in its channel order."""
    from torchvision.transforms import InterpolationMode, v2

    from embed.train import augmentations

    size = int(fields["size"])
    return v2.Compose(
        [
            flat_rgb,
            white_square,
            *augmentations(size, augment, interpolation=InterpolationMode.BICUBIC),
            v2.ToImage(),
            v2.ToDtype(_float32(), scale=True),
            v2.Normalize(list(fields["mean"]), list(fields["std"])),
            *([bgr] if fields["bgr"] else []),
        ]
    )


def white_square(image: Any) -> Any:
    """The image centred on a white square, as the tagger's preprocessing pads it."""
    from PIL import Image

    side = max(image.size)
    if image.size == (side, side):
        return image
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def bgr(pixels: Any) -> Any:
    """RGB → BGR of a C×H×W tensor (normalised in RGB first, as the tagger's preprocessing does)."""
    return pixels.flip(0)


def _float32() -> Any:
    import torch

    return torch.float32
