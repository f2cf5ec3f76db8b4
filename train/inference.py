"""A trained generator ready to sample: a run's snapshot (its G_ema), labels by name, w per label set.

Shared by `curate generate`, `curate metrics` and `curate directions`. Truncation pulls w toward the
mean w of the asked labels, estimated from the mapping network, rather than toward the global mean:
a conditional generator's global mean is a blend of every label set and drags faces away from theirs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.errors import InvalidArgument, ModelError
from curate.tagnames import current_tag, nearest_tags, tag_index
from train.snapshot import list_snapshots, load_snapshot, snapshot_nimg

if TYPE_CHECKING:
    import torch

CENTER_SAMPLES = 4096  # z per label set for its mean w: the mean's error is ~1.5% of w's spread
_KIMG = re.compile(r"^\d+(\.\d+)?$")


@dataclass
class TrainedGenerator:
    """G_ema of one snapshot, on a device, with the run's label vocabulary."""

    G: torch.nn.Module
    network: dict  # train.config.NetworkConfig.as_dict()
    label_names: list[str]
    snapshot: Path
    nimg: int
    device: torch.device
    dataset: dict = field(default_factory=dict)  # the training set's describe()
    _centers: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def c_dim(self) -> int:
        return int(self.network["c_dim"])

    @property
    def z_dim(self) -> int:
        return int(self.network["z_dim"])

    @property
    def resolution(self) -> int:
        return int(self.network["resolution"])

    @property
    def num_ws(self) -> int:
        return int(self.G.num_ws)

    def labels(self, names: str | Iterable[str]) -> list[int]:
        """Indices of `names` (comma-separated or a list) in the vocabulary; see `label_indices`."""
        return label_indices(names, self.label_names)

    def label_tensor(self, rows: list[list[int]]) -> torch.Tensor | None:
        """Multi-hot [len(rows), c_dim] on the device; None for an unconditional generator."""
        import torch

        if not self.c_dim:
            return None
        c = torch.zeros(len(rows), self.c_dim, device=self.device)
        for i, row in enumerate(rows):
            c[i, list(row)] = 1.0
        return c

    def center(self, row: list[int]) -> torch.Tensor:
        """The mean w of label set `row` (the tracked average when unconditional), cached."""
        key = tuple(sorted(row))
        if key not in self._centers:
            self._centers[key] = mean_w(self, key)
        return self._centers[key]

    def ws(
        self,
        z: torch.Tensor,
        rows: list[list[int]] | None = None,
        *,
        truncation: float = 1.0,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """ws [N, num_ws, w_dim] for z [N, z_dim] and one label set per sample (or none)."""
        import torch

        rows = rows if rows is not None else [[] for _ in range(len(z))]
        if len(rows) != len(z):
            raise ValueError(f"{len(z)} z but {len(rows)} label sets")
        with torch.no_grad():
            ws = self.G.mapping(z.to(self.device), self.label_tensor(rows))
            if truncation != 1:
                cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
                centers = torch.stack([self.center(row) for row in rows])[:, None]
                ws[:, :cutoff] = centers.lerp(ws[:, :cutoff], truncation)
        return ws

    def images(
        self,
        ws: torch.Tensor,
        *,
        noise_mode: str = "const",
        batch: int = 32,
        noise_seeds: list[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """uint8 NHWC batches of the images of `ws`. With `noise_mode="random"` and `noise_seeds` (one
        per w), each image's noise is a function of its seed, so it is the same in any batch."""
        if noise_seeds is not None and len(noise_seeds) != len(ws):
            raise ValueError(f"{len(ws)} ws but {len(noise_seeds)} noise seeds")
        batches = (
            (ws[start : start + batch], None if noise_seeds is None else noise_seeds[start : start + batch])
            for start in range(0, len(ws), batch)
        )
        return self.stream(batches, noise_mode=noise_mode)

    def stream(
        self, batches: Iterable[tuple[torch.Tensor, list[int] | None]], *, noise_mode: str = "const"
    ) -> Iterator[np.ndarray]:
        """uint8 NHWC images per (ws, noise seeds) batch, with the next batch already queued on the GPU
        while the caller handles this one: the copy back is the only wait, and it overlaps the next
        forward. `batches` may be lazy; its ws are made when the batch is queued."""
        import torch

        pending: _Pending | None = None
        for ws, noise_seeds in batches:
            if noise_seeds is not None and len(noise_seeds) != len(ws):
                raise ValueError(f"{len(ws)} ws but {len(noise_seeds)} noise seeds")
            with torch.no_grad():  # not around the yields: the caller's code between them keeps its grad mode
                chunk = ws.to(self.device)
                if noise_mode == "random" and noise_seeds is not None:
                    noise = seed_noise(self.G.synthesis, noise_seeds, self.device)
                else:
                    noise = self.G.synthesis.make_noise(len(chunk), noise_mode)
                queued = _Pending.of(self.G.synthesis(chunk, noise))
            if pending is not None:
                yield pending.result()
            pending = queued
        if pending is not None:
            yield pending.result()

    def style_groups(self) -> dict[str, list[int]]:
        """The ws indices of the coarse (4²–8²), middle (16²–32²) and fine (64² up) layers; see
        `style_groups`."""
        return style_groups(self.G.synthesis)


def style_groups(synthesis: torch.nn.Module) -> dict[str, list[int]]:
    """ws indices by the resolution of the convolutions they modulate: coarse 4²–8², middle 16²–32²,
    fine 64² and up. A block's ToRGB shares its w with the next block's first convolution, so each index
    goes with that convolution; the last (the top ToRGB alone) is fine, or the top group of a small net."""
    owner: list[int] = []
    for block in synthesis.blocks:
        owner += [block.resolution] * block.num_conv
    owner.append(synthesis.blocks[-1].resolution)
    groups: dict[str, list[int]] = {"coarse": [], "middle": [], "fine": []}
    for index, resolution in enumerate(owner):
        groups["coarse" if resolution <= 8 else "middle" if resolution <= 32 else "fine"].append(index)
    return groups


def seed_noise(synthesis: torch.nn.Module, seeds: list[int], device: torch.device) -> list[torch.Tensor]:
    """Random noise inputs [N, 1, H, W] per layer, image k's drawn from seeds[k] alone."""
    import torch

    per_seed = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed) + 1_000_000_007)  # not the z stream of the seed
        per_seed.append(
            [torch.randn(1, 1, layer.resolution, layer.resolution, generator=generator)
             for block in synthesis.blocks for layer in block.layers]
        )  # fmt: skip
    return [torch.cat(layers).to(device) for layers in zip(*per_seed, strict=True)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output in [−1, 1], NCHW → uint8 NHWC on the CPU."""
    return _uint8_nhwc(images).cpu().numpy()


def _uint8_nhwc(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(-1, 1) * 127.5 + 127.5).round().byte().permute(0, 2, 3, 1)


@dataclass
class _Pending:
    """A batch on its way to the CPU: on CUDA a non-blocking copy into pinned memory and the event that
    says it landed; elsewhere the array itself."""

    host: torch.Tensor
    event: torch.cuda.Event | None = None

    @classmethod
    def of(cls, images: torch.Tensor) -> _Pending:
        import torch

        pixels = _uint8_nhwc(images)
        if pixels.device.type != "cuda":
            return cls(pixels.contiguous())
        host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
        host.copy_(pixels, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def seed_z(seeds: Iterable[int], z_dim: int) -> torch.Tensor:
    """One z per seed, each a function of its seed alone (so seed 7 is the same face in any batch)."""
    import torch

    return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def mean_w(gen: TrainedGenerator, row: tuple[int, ...], samples: int = CENTER_SAMPLES) -> torch.Tensor:
    """The mean of mapping(z, labels) over `samples` fixed z (the tracked w_avg when unconditional)."""
    import torch

    if not gen.c_dim:
        return gen.G.mapping.w_avg.detach().clone()
    z = torch.randn(samples, gen.z_dim, generator=torch.Generator().manual_seed(123_456_789))
    total = torch.zeros(gen.G.w_dim, device=gen.device)
    with torch.no_grad():
        for start in range(0, samples, 1024):
            chunk = z[start : start + 1024].to(gen.device)
            c = gen.label_tensor([list(row)] * len(chunk))
            total += gen.G.mapping(chunk, c)[:, 0].sum(dim=0)
    return total / samples


def find_snapshot(run: Path, snapshot: str | Path | None = None) -> Path:
    """The snapshot to use: `run` itself when it is a file; else `snapshot` (a path, a file name in the
    run, or its kimg) or the newest in the run."""
    run = Path(run).expanduser()
    if run.is_file():
        return run
    if not run.is_dir():
        raise InvalidArgument(f"no run at {run}: give a run folder (WORKSPACE/runs/NAME) or a snapshot file")
    found = list_snapshots(run)
    if snapshot is None:
        if not found:
            raise ModelError(f"{run} holds no snapshot yet: train it first (`curate train --out {run}`)")
        return found[-1]
    given = Path(snapshot).expanduser()
    if given.is_file():
        return given
    text = str(snapshot)
    for path in found:
        nimg = snapshot_nimg(path)
        if text in (path.name, path.stem) or (_KIMG.match(text) and nimg == round(float(text) * 1000)):
            return path
    names = ", ".join(p.name for p in found) or "none"
    raise InvalidArgument(f"no snapshot {text!r} in {run} (a file name or its kimg); it has: {names}")


def load_generator(run: Path, snapshot: str | Path | None = None, device: str = "auto") -> TrainedGenerator:
    """G_ema of a run's snapshot (the newest by default), in eval mode on `device`."""
    from curate.device import pick_device
    from train.config import NetworkConfig

    path = find_snapshot(run, snapshot)
    state = load_snapshot(path)
    where = pick_device(device)
    G, _ = NetworkConfig(**state["network"]).build()  # not on `meta`: the FIR buffers are not saved
    G.load_state_dict(state["trainer"]["G_ema"])
    G = G.to(where)
    G.eval().requires_grad_(False)
    return TrainedGenerator(
        G=G,
        network=dict(state["network"]),
        label_names=list(state.get("label_names") or []),
        snapshot=path,
        nimg=_snapshot_images(state, path),
        device=where,
        dataset=dict(state.get("dataset") or {}),
    )


def _snapshot_images(state: dict, path: Path) -> int:
    """Images shown at the snapshot: its name says, else steps × batch (a renamed file)."""
    nimg = snapshot_nimg(path)
    if nimg is not None:
        return nimg
    return int(state["trainer"]["step"]) * int(state.get("hyperparameters", {}).get("batch", 0))


def label_indices(names: str | Iterable[str], label_names: list[str]) -> list[int]:
    """Indices of tag names in a vocabulary, in Booru (`blonde_hair`) or Illustration2Vec (`blonde
    hair`) spelling and by old names (`twin tails`); an unknown name is an error naming the nearest."""
    wanted = [n for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if wanted and not label_names:
        raise InvalidArgument(
            f"this generator is unconditional: it takes no labels (asked for {', '.join(wanted)})"
        )
    index = tag_index(label_names)
    found = []
    for name in wanted:
        tag = current_tag(name)
        if tag not in index:
            near = nearest_tags(tag, index)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise InvalidArgument(
                f"unknown label {name.strip()!r}: the run's {len(label_names)} labels do not include it{hint}"
            )
        found.append(index[tag])
    return list(dict.fromkeys(found))
