"""The feature network of FID, KID and precision/recall: pytorch-fid's Inception-v3 (TensorFlow's
`pt_inception-2015-12-05` weights) with its 2048 pool features, its weights taken from the registry.

pytorch-fid would download its weights itself; `_weights_from` hands it our verified file instead, so
the cache, the pinned sha256 and offline mode are the registry's, as for every other model.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import ModelError
from curate.progress import StageProgress
from curate.registry import INCEPTION_FID, resolve, sha256_of

if TYPE_CHECKING:
    import torch

FEATURE_DIM = 2048
_LOADED: dict[tuple, FeatureNetwork] = {}  # (file, size, mtime, device): one load per process


class FeatureNetwork:
    """Features [N, D] float32 of uint8 NHWC images; `key` names the network for the reals' cache."""

    def __init__(self, module: torch.nn.Module, device: torch.device, key: str, dim: int = FEATURE_DIM):
        self.module, self.device, self.key, self.dim = module.eval().to(device), device, key, dim
        self.calls = 0  # batches seen (tests count them)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features of one batch: uint8 [N, H, W, 3] → float32 [N, dim]."""
        import torch

        self.calls += 1
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255  # pytorch-fid's input: [0, 1], as ToTensor gives
        with torch.no_grad():
            out = self.module(x)
        out = out[0] if isinstance(out, (list, tuple)) else out  # InceptionV3 returns a list of blocks
        return out.reshape(len(images), -1).float().cpu().numpy()

    def extract(
        self, batches: Iterable[np.ndarray], total: int, description: str, progress: bool = True
    ) -> Iterator[np.ndarray]:
        """Features of each batch in turn, with a progress bar over `total` images."""
        with StageProgress(description, total=total, unit="images", enabled=progress) as bar:
            for images in batches:
                yield self(images)
                bar.advance(len(images))


def inception_weights(path: str | Path | None = None) -> Path:
    """The weights file: `path` as given, else the registry's verified cached copy (downloaded if allowed)."""
    return resolve(INCEPTION_FID, path)


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> FeatureNetwork:
    """pytorch-fid's FID Inception on `device` with the weights at `path` (default: the registry's)."""
    import torch

    weights = inception_weights(path)
    device = torch.device(device)
    stat = weights.stat()
    memo = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    if memo not in _LOADED:
        from pytorch_fid.inception import InceptionV3

        try:
            with _weights_from(weights):
                module = InceptionV3(
                    [InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                    resize_input=True,
                    normalize_input=True,
                    use_fid_inception=True,
                )
        except (
            RuntimeError,
            KeyError,
            OSError,
            ValueError,
            pickle.UnpicklingError,
        ) as exc:  # not its state dict
            raise ModelError(
                f"{weights} is not pytorch-fid's Inception state dict ({INCEPTION_FID.filename}): "
                f"{type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        _LOADED.clear()  # one network held at a time: a new file or device replaces the old
        _LOADED[memo] = FeatureNetwork(module, device, key=sha256_of(weights))
    return _LOADED[memo]


@contextmanager
def _weights_from(path: Path) -> Iterator[None]:
    """pytorch-fid's `load_state_dict_from_url` reads `path` (weights only) instead of downloading."""
    import pytorch_fid.inception as library
    import torch

    def local(url: str, *args, **kwargs) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    original: Callable = library.load_state_dict_from_url
    library.load_state_dict_from_url = local
    try:
        yield
    finally:
        library.load_state_dict_from_url = original
