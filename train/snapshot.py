"""Training snapshots: one file holding everything a run needs to continue exactly, written atomically.

A snapshot holds G, D and G_ema, both optimisers, the augmentation state, the counters, the
regularisers' running values and every RNG state, as tensors and plain containers only, so it loads
with `torch.load(weights_only=True)`: opening a snapshot never runs code from it.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from curate.errors import ModelError

FORMAT = "curate-stylegan2/1"
KEEP_RESUMABLE = 2  # the newest snapshots keep their optimiser state; older ones keep the networks only
OPTIMISER_KEYS = ("G_opt", "D_opt")
_NAME = re.compile(r"^snapshot-(\d{6})(?:\.(\d{3}))?\.pt$")


def snapshot_name(nimg: int) -> str:
    """`snapshot-000200.pt` at 200 kimg; fractions of a kimg (tiny test runs) add `.064`."""
    kimg, rest = divmod(nimg, 1000)
    return f"snapshot-{kimg:06d}.pt" if rest == 0 else f"snapshot-{kimg:06d}.{rest:03d}.pt"


def snapshot_nimg(path: Path) -> int | None:
    """The image count a snapshot's name says, or None for other files."""
    match = _NAME.match(path.name)
    if not match:
        return None
    return int(match.group(1)) * 1000 + int(match.group(2) or 0)


def list_snapshots(run: Path) -> list[Path]:
    """The run's snapshots, oldest first."""
    if not run.is_dir():
        return []
    found = [(snapshot_nimg(p), p) for p in run.iterdir() if snapshot_nimg(p) is not None]
    return [p for _, p in sorted(found)]


def latest_snapshot(run: Path) -> Path | None:
    snapshots = list_snapshots(run)
    return snapshots[-1] if snapshots else None


def save_snapshot(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically, marked as a snapshot."""
    return save_atomic(path, {"format": FORMAT, **state})


def save_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save through a temporary file in the same folder, fsynced, then renamed over `path`."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself survives a power cut
    finally:
        os.close(descriptor)
    return path


def load_snapshot(path: Path) -> dict[str, Any]:
    """A snapshot's contents on the CPU; ModelError for anything that is not one."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"no snapshot at {path}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path} is not a readable curate snapshot: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ModelError(f"{path} is not a curate StyleGAN2 snapshot (format {found!r}, expected {FORMAT})")
    return state


def is_resumable(state: dict[str, Any]) -> bool:
    """Whether a snapshot still holds its optimisers' state (older ones are slimmed to the networks)."""
    return all(key in state["trainer"] for key in OPTIMISER_KEYS)


def slim_older_snapshots(run: Path, keep: int = KEEP_RESUMABLE) -> list[Path]:
    """Rewrite all but the newest `keep` snapshots without optimiser state (about 55% of their size).

    G, D, G_ema, the augmentation state and the counters stay, so every snapshot can still generate,
    be measured and seed another run; only the newest continue a run exactly.
    """
    slimmed = []
    for path in list_snapshots(run)[:-keep] if keep else list_snapshots(run):
        state = load_snapshot(path)
        if not is_resumable(state):
            continue
        for key in OPTIMISER_KEYS:
            state["trainer"].pop(key)
        save_snapshot(path, state)
        slimmed.append(path)
    return slimmed


def rng_states() -> dict[str, Any]:
    """Every RNG state torch keeps: the CPU generator and each CUDA device's."""
    import torch

    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
