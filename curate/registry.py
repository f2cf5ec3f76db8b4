"""The model registry: every downloadable artifact, its pinned sha256, the cache, and offline mode.

A model is given either as a local path (used as it is) or by its registry name, in which case it is
taken from the cache (`$CURATE_CACHE`, default `~/.cache/curate`) or downloaded there and verified.
With `CURATE_OFFLINE=1` (or the hub's `HF_HUB_OFFLINE=1`) nothing touches the network and a missing
model is an error that says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from curate import USER_AGENT
from curate.errors import ModelError

_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Artifact:
    """A file we can fetch: where from, the sha256 it must have, and its licence."""

    name: str
    url: str
    sha256: str
    filename: str
    licence: str
    description: str
    size: int | None = None


CASCADE = Artifact(
    name="lbpcascade_animeface",
    url="https://raw.githubusercontent.com/nagadomi/lbpcascade_animeface/"
    "4433ab1ae1166ea75acfe99eb0f18709dac329a0/lbpcascade_animeface.xml",
    sha256="9376d30ac38db6bda2a68b88b3b76bbd7e6aa33af47f7f5c76bc88ca75f1ce30",
    filename="lbpcascade_animeface.xml",
    licence="MIT (nagadomi)",
    description="OpenCV LBP cascade for anime faces",
    size=246945,
)
ANIME_FACE_FRCNN = Artifact(
    name="anime-face-frcnn",
    url="https://github.com/hysts/anime-face-detector/releases/download/v0.0.1/mmdet_anime-face_faster-rcnn.pth",
    sha256="8cd3514eef1a69d9e448b87982bc7d37c8c8f5a1fc2cbb84579d382e5e4acbf1",
    filename="mmdet_anime-face_faster-rcnn.pth",
    licence="MIT (hysts/anime-face-detector)",
    description="Faster R-CNN ResNet-50 FPN anime-face detector, mmdet checkpoint",
)
# The FID Inception-v3: TensorFlow's inception-2015-12-05 as pytorch-fid ports it. torch hub names the
# file after the first 8 hex digits of its sha256; the full digest and size are those other projects pin
# for this file (torch-fidelity republishes the same bytes as weights-inception-2015-12-05-6726825d.pth).
INCEPTION_FID = Artifact(
    name="inception-fid",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    filename="pt_inception-2015-12-05-6726825d.pth",
    licence="Apache-2.0 (pytorch-fid); weights ported from TensorFlow's inception-2015-12-05",
    description="Inception-v3 of FID (pytorch-fid's port of TensorFlow's), for FID, KID and precision/recall",
    size=95628359,
)
ARTIFACTS: dict[str, Artifact] = {a.name: a for a in (CASCADE, ANIME_FACE_FRCNN, INCEPTION_FID)}


def cache_dir() -> Path:
    """Where downloaded models live: `$CURATE_CACHE`, else `~/.cache/curate`."""
    return Path(os.environ.get("CURATE_CACHE") or Path.home() / ".cache" / "curate").expanduser()


def offline() -> bool:
    """True when no model may be downloaded (CURATE_OFFLINE or the hub's offline variables)."""
    names = ("CURATE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def cached_path(artifact: Artifact) -> Path:
    return cache_dir() / artifact.name / artifact.filename


def resolve(
    artifact: Artifact | str, path: str | os.PathLike[str] | None = None, *, timeout: float = 60.0
) -> Path:
    """A local file for `artifact`: `path` if given, else the verified cached copy (downloaded if allowed)."""
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise ModelError(f"model file not found: {local}")
        return local
    if isinstance(artifact, str):
        try:
            artifact = ARTIFACTS[artifact]
        except KeyError:
            raise ModelError(f"unknown model {artifact!r}; known: {', '.join(sorted(ARTIFACTS))}") from None
    target = cached_path(artifact)
    if target.is_file():
        if sha256_of(target) == artifact.sha256:
            return target
        if offline():
            raise ModelError(
                f"{target} does not match the pinned sha256 of {artifact.name}; "
                f"replace it with the file from {artifact.url}"
            )
    elif offline():
        raise ModelError(
            f"{artifact.description} ({artifact.name}) is not in the cache and downloads are off "
            f"(CURATE_OFFLINE/HF_HUB_OFFLINE). Download {artifact.url} and put it at {target}, "
            "or pass the file's path."
        )
    return _download(artifact, target, timeout)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(artifact: Artifact, target: Path, timeout: float) -> Path:
    """Stream to a temporary name beside the target, check the sha256, then rename into place."""
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.part")
    digest = hashlib.sha256()
    try:
        with requests.get(
            artifact.url, stream=True, timeout=timeout, headers={"User-Agent": USER_AGENT}
        ) as reply:
            if reply.status_code != 200:
                raise ModelError(
                    f"downloading {artifact.name} from {artifact.url} failed: HTTP {reply.status_code}"
                )
            with open(tmp, "wb") as handle:
                for chunk in reply.iter_content(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
        if digest.hexdigest() != artifact.sha256:
            raise ModelError(
                f"{artifact.name} from {artifact.url} has sha256 {digest.hexdigest()}, "
                f"expected {artifact.sha256}"
            )
        os.replace(tmp, target)
    except requests.RequestException as exc:
        raise ModelError(
            f"downloading {artifact.name} from {artifact.url} failed ({type(exc).__name__}); "
            f"put the file at {target} or pass its path"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def cached_hub_file(model_id: str, filename: str) -> Path | None:
    """`filename` of hub repo `owner/name[@revision]` if the cache already holds it; never the network."""
    repo, _, revision = model_id.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir() / "hub", revision=revision or None)
    return Path(found) if isinstance(found, str) else None  # else None, or a sentinel: known to be absent


def resolve_hub_folder(model_id: str, files: tuple[str, ...]) -> Path:
    """A local snapshot of `files` from hub repo `owner/name[@revision]`, cached under `$CURATE_CACHE/hub`.

    Offline, only the cache is looked at, and a miss is a ModelError naming the files to fetch by hand.
    """
    repo, _, revision = model_id.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelError(f"{model_id!r} is neither a folder nor a hub id like owner/name[@revision]")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = cache_dir() / "hub"
    try:
        folder = snapshot_download(
            repo,
            revision=revision or None,
            allow_patterns=list(files),
            cache_dir=where,
            local_files_only=offline(),
        )
    except LocalEntryNotFoundError:
        raise ModelError(
            f"{repo} is not in the cache ({where}) and downloads are off (CURATE_OFFLINE/HF_HUB_OFFLINE): "
            f"fetch {', '.join(files)} from the hub into a folder and pass that folder instead"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(
            f"fetching {repo} from the hub failed ({type(exc).__name__}: {exc}); "
            f"put {', '.join(files)} in a folder and pass that folder instead"
        ) from exc
    return Path(folder)
