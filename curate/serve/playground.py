"""Runs the generate page may use, and its history: `RUN/playground/<entry>/` (params.json + PNGs).

Nothing a client sends becomes a path: a run is a name matched against WORKSPACE/runs/* (and the run
`--run` gave), a snapshot a name in that run's listing, an entry an id of a fixed pattern looked up in
the known runs, an image an index. An entry is written to a temporary folder renamed into place, so it
is whole or absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import InvalidArgument

FORMAT = "curate-playground/1"
FOLDER = "playground"
PARAMS = "params.json"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SNAPSHOT_NAME = re.compile(r"^snapshot-\d{6}(\.\d{3})?\.pt$")
ENTRY_ID = re.compile(r"^\d{8}-\d{6}-\d{3}-[0-9a-f]{6}$")  # time to the millisecond, then random
IMAGE_ID = re.compile(r"^(\d{1,3}|grid)$")
HISTORY_LIMIT = 200  # entries the history list shows, newest first


class NotFound(InvalidArgument):
    """A run, snapshot, entry or image the app does not have: answered 404."""

    status = 404


@dataclass(frozen=True)
class Run:
    name: str
    path: Path

    @property
    def playground(self) -> Path:
        return self.path / FOLDER


class Catalog:
    """The runs of a workspace (folders of WORKSPACE/runs with a snapshot) and the one `--run` named."""

    def __init__(self, runs_root: Path, given: Path | None = None):
        self.runs_root = runs_root
        self.given = None
        if given is not None:
            given = Path(given).expanduser().resolve()
            self.given = given if given.is_dir() else given.parent

    def runs(self) -> dict[str, Run]:
        """Name → run, listed afresh (a run trained while the app is up appears)."""
        from train.snapshot import list_snapshots

        found: dict[str, Run] = {}
        if self.runs_root.is_dir():
            for path in sorted(self.runs_root.iterdir()):
                if RUN_NAME.match(path.name) and path.is_dir() and list_snapshots(path):
                    found[path.name] = Run(path.name, path)
        if self.given is not None and RUN_NAME.match(self.given.name):
            found[self.given.name] = Run(self.given.name, self.given)  # the one asked for wins its name
        return found

    def default(self) -> str | None:
        """The `--run` given, else the only run, else none (the page asks)."""
        runs = self.runs()
        if self.given is not None and self.given.name in runs:
            return self.given.name
        return next(iter(runs)) if len(runs) == 1 else None

    def run(self, name: str | None) -> Run:
        """The run of that name (the default when None); unknown names are a 404 naming the known."""
        name = name if name is not None else self.default()
        if name is None:
            raise InvalidArgument("choose a run: this workspace has several (GET /api/runs lists them)")
        runs = self.runs()
        if not RUN_NAME.match(name) or name not in runs:
            known = ", ".join(runs) or "none"
            raise NotFound(f"no run named {name[:80]!r} (runs: {known})")
        return runs[name]

    def snapshot(self, run: Run, name: str | None) -> Path:
        """The snapshot file of that name in `run` (the newest when None)."""
        from train.snapshot import list_snapshots

        found = list_snapshots(run.path)
        if not found:
            raise NotFound(f"run {run.name} holds no snapshot yet")
        if name is None:
            return found[-1]
        for path in found:
            if SNAPSHOT_NAME.match(name) and path.name == name:
                return path
        raise NotFound(
            f"no snapshot {name[:80]!r} in run {run.name} (it has {', '.join(p.name for p in found)})"
        )

    def entry(self, entry: str) -> tuple[Run, Path]:
        """The run and folder of a history entry, found by id in the known runs."""
        if not ENTRY_ID.match(entry):
            raise NotFound(f"no entry {entry[:80]!r}: ids look like 20250101-120000-123-1a2b3c")
        for run in self.runs().values():
            folder = run.playground / entry
            if (folder / PARAMS).is_file():
                return run, folder
        raise NotFound(f"no entry {entry} in any run's playground")


def new_entry_id() -> str:
    """Ids sort by time: the history lists newest first by name alone."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{int(now * 1000) % 1000:03d}-{uuid.uuid4().hex[:6]}"


def image_file(k: int) -> str:
    return f"{k:03d}.png"


def write_entry(run: Run, entry: str, params: dict[str, Any], images: list[np.ndarray], columns: int) -> Path:
    """`RUN/playground/<entry>/`: the PNGs, a grid of them and params.json, renamed into place whole."""
    from train.generate_modes import tile_grid
    from train.pngwriter import write_png

    final = run.playground / entry
    tmp = run.playground / f".{entry}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True)
    try:
        for k, image in enumerate(images):
            write_png(tmp / image_file(k), image)
        write_png(tmp / "grid.png", tile_grid(images, columns))
        (tmp / PARAMS).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_params(folder: Path) -> dict[str, Any]:
    return json.loads((folder / PARAMS).read_text(encoding="utf-8"))


def history(run: Run, limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
    """The run's entries, newest first: id, kind, time, image count and a summary of the parameters."""
    if not run.playground.is_dir():
        return []
    names = sorted((p.name for p in run.playground.iterdir() if ENTRY_ID.match(p.name)), reverse=True)
    listed = []
    for name in names[:limit]:
        try:
            params = read_params(run.playground / name)
        except (OSError, ValueError):
            continue  # removed or damaged by hand: not part of the history
        request = params.get("request", {})
        listed.append({
            "entry": name, "kind": params.get("kind"), "created_at": params.get("created_at"),
            "images": len(params.get("images", [])), "snapshot": params.get("snapshot", {}).get("name"),
            "mode": request.get("mode"), "labels": request.get("labels", []), "seeds": request.get("seeds"),
        })  # fmt: skip
    return listed


def image_path(folder: Path, image: str) -> Path:
    """The file of image `image` ("0".."999" or "grid") of an entry; a 404 when it has no such image."""
    if not IMAGE_ID.match(image):
        raise NotFound(f"no image {image[:20]!r}: images are numbered from 0, or `grid`")
    path = folder / ("grid.png" if image == "grid" else image_file(int(image)))
    if not path.is_file():
        raise NotFound(f"entry {folder.name} has no image {image}")
    return path
