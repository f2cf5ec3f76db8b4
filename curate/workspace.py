"""Workspace layout: where originals, crops, manifests, models and runs live, and atomic file landing."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("data")
# Extensions an original can be stored under; they come from the bytes' signature, never from a server.
IMAGE_EXTENSIONS = ("jpg", "png", "gif", "webp", "bmp", "tif")


@dataclass(frozen=True)
class Workspace:
    """A self-describing folder holding every stage's outputs; see the README for the layout."""

    root: Path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Workspace:
        """Open (creating if needed) the workspace at `path`."""
        ws = cls(Path(path).expanduser().resolve())
        ws.manifests.mkdir(parents=True, exist_ok=True)
        return ws

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def crops(self) -> Path:
        return self.root / "crops"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def tmp(self) -> Path:
        """Scratch space on the workspace's filesystem, so landing a file is one atomic rename."""
        return self.root / ".tmp"

    def manifest_dir(self, stage: str) -> Path:
        return self.manifests / stage

    def image_path(self, md5: str, ext: str) -> Path:
        """Content-addressed home of an original: `images/ab/<md5>.<ext>`."""
        return self.images / md5[:2] / f"{md5}.{ext}"

    def find_image(self, md5: str, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Path | None:
        """The stored original with this md5 and one of `extensions`, or None (a few stats, no listing)."""
        stem = os.path.join(self.images, md5[:2], md5)  # strings, not Paths: this runs once per post
        for ext in extensions:
            if os.path.exists(f"{stem}.{ext}"):
                return self.image_path(md5, ext)
        return None

    def relative(self, path: Path) -> str:
        """A path inside the workspace as stored in manifests (posix, relative to the root)."""
        return path.relative_to(self.root).as_posix()

    def temp_dir(self) -> Path:
        """A scratch folder owned by this process; `sweep_temp` removes those of dead processes."""
        folder = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def sweep_temp(self) -> int:
        """Remove scratch folders left by processes that no longer run; returns how many."""
        if not self.tmp.is_dir():
            return 0
        removed = 0
        for entry in self.tmp.iterdir():
            owner = entry.name.split("-", 1)[0]
            if owner.isdigit() and (int(owner) == os.getpid() or pid_alive(int(owner))):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed


def land(tmp: Path, dest: Path) -> Path:
    """Move a finished temporary file to its final name atomically (a kill leaves old or new, never half)."""
    try:
        os.replace(tmp, dest)
    except FileNotFoundError:  # first file of its folder: make it (rarely) rather than stat every time
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    return dest


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
