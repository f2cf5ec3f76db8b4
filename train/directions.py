"""Attribute directions in W: stored per run, and `--edit name=strength` moves ws along them.

A direction is a unit vector in W; one unit of strength is the spread (standard deviation) of the
sampled ws along it, so `smile=+1.5` means one and a half typical distances toward `smile` whatever
the network's scale. Fitting (`curate directions`) lives beside this in train/direction_fit.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from curate.errors import InvalidArgument, ModelError

if TYPE_CHECKING:
    import torch

FORMAT = "curate-directions/1"
FILE = "directions.pt"
_EDIT = re.compile(r"^\s*([^=]+?)\s*=\s*([+-]?\d+(?:\.\d*)?|[+-]?\.\d+)\s*$")


@dataclass
class Directions:
    """One direction per name, with the held-out accuracy of the classifier it came from."""

    names: list[str]
    vectors: torch.Tensor  # [k, w_dim], unit length
    scales: torch.Tensor  # [k]: the standard deviation of sampled ws along each vector
    accuracy: list[float]  # held-out accuracy of each tag's logistic regression
    info: dict = field(default_factory=dict)  # snapshot, tagger, sample count, positives per tag…

    def index(self, name: str) -> int:
        """Where `name` is (Booru or Illustration2Vec spelling); an unknown name is an error naming the
        nearest directions there are."""
        from curate.tagnames import current_tag, nearest_tags, tag_index

        index = tag_index(self.names)
        tag = current_tag(name)
        if tag not in index:
            near = nearest_tags(tag, index)
            shown = ", ".join(near or self.names[:8]) + ("" if near or len(self.names) <= 8 else " …")
            which = "nearest" if near else "there are"
            raise InvalidArgument(
                f"--edit {name.strip()!r}: no such direction ({which}: {shown}); "
                "`curate directions --tags` fits more"
            )
        return index[tag]


def save_directions(run: Path, directions: Directions) -> Path:
    """`RUN/directions.pt`, written atomically (tensors and plain values: loads weights-only)."""
    from train.snapshot import save_atomic

    payload = {
        "format": FORMAT,
        "names": list(directions.names),
        "vectors": directions.vectors.detach().float().cpu(),
        "scales": directions.scales.detach().float().cpu(),
        "accuracy": [float(a) for a in directions.accuracy],
        "info": dict(directions.info),
    }
    return save_atomic(Path(run) / FILE, payload)


def load_directions(run: Path) -> Directions:
    """The directions `curate directions` fitted for `run` (a run folder or the file itself)."""
    import torch

    run = Path(run).expanduser()
    path = run if run.is_file() else run / FILE
    if not path.is_file():
        raise ModelError(f"{run} has no {FILE}: fit them first with `curate directions --run {run}`")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"{path} is not a curate directions file")
    return Directions(state["names"], state["vectors"], state["scales"], state["accuracy"], state["info"])


def parse_edits(text: str) -> dict[str, float]:
    """`smile=+1.5,glasses=-1` → {"smile": 1.5, "glasses": -1.0}."""
    edits: dict[str, float] = {}
    for part in filter(str.strip, text.split(",")):
        match = _EDIT.match(part)
        if not match:
            raise InvalidArgument(f"--edit {part.strip()!r}: write name=strength, e.g. smile=+1.5")
        edits[match.group(1)] = float(match.group(2))
    return edits


def edit_ws(ws: torch.Tensor, directions: Directions, edits: dict[str, float]) -> torch.Tensor:
    """ws moved by Σ strength × scale × direction (every w of each sample alike)."""
    if not edits:
        return ws
    offset = ws.new_zeros(ws.shape[-1])
    for name, strength in edits.items():
        i = directions.index(name)
        step = directions.vectors[i] * directions.scales[i] * strength
        offset = offset + step.to(device=ws.device, dtype=ws.dtype)
    return ws + offset
