"""One thread owns the generator: requests queue up, and what is queued for the same model is drawn in
one batched forward (up to `batch` images), each request's future resolved with its own images.

One model per process: a request for another run or snapshot replaces the loaded one. Every image is
a function of its own parameters (z and noise from its seed, truncation toward its label set's mean w),
so which requests share a forward never changes a pixel.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import InvalidArgument

if TYPE_CHECKING:
    import torch

    from train.directions import Directions
    from train.inference import TrainedGenerator

MAX_QUEUED = 4096  # images waiting at most; more is refused (503) rather than held in memory
MAX_STRENGTH = 10.0  # of an edit, in spreads of w along its direction
GROUPS = ("coarse", "middle", "fine")


def style_groups(resolution: int) -> list[str]:
    """The style groups a network of this resolution has (see train.inference.style_groups)."""
    return [g for g, low in zip(GROUPS, (4, 16, 64), strict=True) if resolution >= low]


class Busy(InvalidArgument):
    """Too much is queued already: try again shortly."""

    status = 503


@dataclass(frozen=True)
class Sample:
    """Everything that decides one image. With `mix`, the styles of group `mix[1]` come from `mix[0]`."""

    seed: int
    labels: tuple[str, ...] = ()
    truncation: float = 1.0
    truncation_cutoff: int | None = None
    edits: tuple[tuple[str, float], ...] = ()
    noise_mode: str = "const"
    mix: tuple[Sample, str] | None = None

    def record(self) -> dict[str, Any]:
        """As stored in params.json (and read back by `from_record`)."""
        out: dict[str, Any] = {
            "seed": self.seed, "labels": list(self.labels), "truncation": self.truncation,
            "truncation_cutoff": self.truncation_cutoff, "edits": dict(self.edits),
            "noise_mode": self.noise_mode,
        }  # fmt: skip
        if self.mix is not None:
            out["mix"] = {"with": self.mix[0].record(), "group": self.mix[1]}
        return out

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        mix = record.get("mix")
        return cls(
            seed=int(record["seed"]),
            labels=tuple(record.get("labels", ())),
            truncation=float(record.get("truncation", 1.0)),
            truncation_cutoff=record.get("truncation_cutoff"),
            edits=tuple(sorted((str(k), float(v)) for k, v in record.get("edits", {}).items())),
            noise_mode=str(record.get("noise_mode", "const")),
            mix=(cls.from_record(mix["with"]), str(mix["group"])) if mix else None,
        )


@dataclass
class Task:
    key: tuple[Path, Path]  # (run folder, snapshot file)
    samples: list[Sample] | None  # None: describe the model
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return len(self.samples or ())


@dataclass
class _Resolved:
    seed: int
    row: list[int]
    truncation: float
    cutoff: int | None
    edits: tuple[tuple[str, float], ...]
    noise_mode: str
    mix: tuple[_Resolved, list[int]] | None = None


class Loaded:
    """The generator of one snapshot, with its run's directions (re-read when the file changes)."""

    def __init__(self, key: tuple[Path, Path], device: str):
        from train.inference import load_generator

        self.key = key
        self.gen: TrainedGenerator = load_generator(key[0], key[1], device)
        self.groups = {name: ids for name, ids in self.gen.style_groups().items() if ids}
        self._directions: tuple[int, Directions | None] | None = None

    def directions(self) -> Directions | None:
        from train.directions import FILE, load_directions

        path = self.key[0] / FILE
        stamp = path.stat().st_mtime_ns if path.is_file() else 0
        if self._directions is None or self._directions[0] != stamp:
            found = load_directions(self.key[0]) if stamp else None
            if found is not None and found.vectors.shape[-1] != self.gen.G.w_dim:
                found = None  # fitted for another network: nothing to offer
            self._directions = (stamp, found)
        return self._directions[1]

    def describe(self) -> dict[str, Any]:
        gen, directions = self.gen, self.directions()
        listed = []
        if directions is not None:
            pairs = zip(directions.names, directions.accuracy, strict=True)
            listed = [{"name": n, "accuracy": round(float(a), 4)} for n, a in pairs]
        return {
            "snapshot": gen.snapshot.name, "nimg": gen.nimg, "resolution": gen.resolution,
            "labels": gen.label_names, "conditional": bool(gen.c_dim), "num_ws": gen.num_ws,
            "style_groups": self.groups, "directions": listed, "device": str(gen.device),
        }  # fmt: skip

    def resolve(self, sample: Sample) -> _Resolved:
        """Names to indices, checked: an unknown label or direction is an error naming the nearest."""
        gen = self.gen
        if sample.truncation_cutoff is not None and not 1 <= sample.truncation_cutoff <= gen.num_ws:
            raise InvalidArgument(f"truncation_cutoff must be 1 to {gen.num_ws} (this network's ws)")
        if sample.edits:
            directions = self.directions()
            if directions is None:
                raise InvalidArgument("this run has no directions: fit them with `curate directions`")
            for name, strength in sample.edits:
                directions.index(name)
                if not abs(strength) <= MAX_STRENGTH:
                    raise InvalidArgument(f"edit {name}: strengths are -{MAX_STRENGTH:g} to {MAX_STRENGTH:g}")
        mix = None
        if sample.mix is not None:
            other, group = sample.mix
            if group not in self.groups:
                raise InvalidArgument(f"no {group!r} styles in this network: it has {', '.join(self.groups)}")
            mix = (self.resolve(other), self.groups[group])
        row = gen.labels(list(sample.labels))
        return _Resolved(
            sample.seed,
            row,
            sample.truncation,
            sample.truncation_cutoff,
            sample.edits,
            sample.noise_mode,
            mix,
        )


class Worker:
    """The generator's thread and its queue; `submit` and `describe` return futures."""

    def __init__(self, device: str = "auto", batch: int = 16):
        self.device = device
        self.batch = max(1, batch)
        self.forward_calls = 0  # synthesis forwards run (tests count them)
        self.images_made = 0
        self._pending: deque[Task] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._model: Loaded | None = None
        self._thread = threading.Thread(target=self._loop, name="curate-generator", daemon=True)

    def start(self) -> Worker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30) -> None:
        with self._cv:
            self._stopping = True
            left, self._pending = list(self._pending), deque()
            self._cv.notify_all()
        for task in left:
            task.future.cancel()
        self._thread.join(timeout)
        self._model = None

    def submit(self, run: Path, snapshot: Path, samples: list[Sample]) -> Future:
        """A future of the uint8 HWC images of `samples`, in order."""
        return self._put(Task((run, snapshot), list(samples)))

    def describe(self, run: Path, snapshot: Path) -> Future:
        """A future of the snapshot's vocabulary, resolution, style groups and directions (loading it)."""
        return self._put(Task((run, snapshot), None))

    def _put(self, task: Task) -> Future:
        with self._cv:
            if self._stopping:
                raise Busy("the server is stopping")
            queued = sum(t.size for t in self._pending)
            if queued + task.size > MAX_QUEUED:
                raise Busy(f"{queued} images are queued already: try again shortly")
            self._pending.append(task)
            self._cv.notify()
        return task.future

    def _take(self) -> list[Task] | None:
        """The oldest task and the queued ones for the same model that fit in its batch."""
        with self._cv:
            while not self._pending and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            first = self._pending.popleft()
            taken, room = [first], max(self.batch, first.size) - first.size
            for task in list(self._pending):
                if task.key == first.key and task.size <= room:
                    self._pending.remove(task)
                    taken.append(task)
                    room -= task.size
            return taken

    def _loop(self) -> None:
        while (tasks := self._take()) is not None:
            tasks = [t for t in tasks if t.future.set_running_or_notify_cancel()]
            try:
                model = self._load(tasks[0].key) if tasks else None
            except Exception as error:  # every waiting request hears of it
                for task in tasks:
                    task.future.set_exception(error)
                continue
            work = []
            for task in tasks:
                try:
                    if task.samples is None:
                        task.future.set_result(model.describe())
                    else:
                        work.append((task, [model.resolve(s) for s in task.samples]))
                except Exception as error:  # a bad request fails alone
                    task.future.set_exception(error)
            if work:
                self._render(model, work)

    def _load(self, key: tuple[Path, Path]) -> Loaded:
        if self._model is None or self._model.key != key:
            self._model = None  # one model per process: the old one goes first
            _free_memory(self.device)
            self._model = Loaded(key, self.device)
        return self._model

    def _render(self, model: Loaded, work: list[tuple[Task, list[_Resolved]]]) -> None:
        try:
            flat = [r for _, resolved in work for r in resolved]
            images = self._images(model, flat)
        except Exception as error:
            for task, _ in work:
                task.future.set_exception(error)
            return
        start = 0
        for task, resolved in work:
            task.future.set_result(images[start : start + len(resolved)])
            start += len(resolved)

    def _images(self, model: Loaded, samples: list[_Resolved]) -> list[np.ndarray]:
        import torch

        from train.inference import to_uint8

        ws = self._ws(model, samples)
        synthesis, out = model.gen.G.synthesis, []
        with torch.no_grad():
            for start in range(0, len(samples), self.batch):
                chunk = samples[start : start + self.batch]
                noise = _noise(model.gen, [s.noise_mode for s in chunk], [s.seed for s in chunk])
                self.forward_calls += 1
                out += list(to_uint8(synthesis(ws[start : start + len(chunk)], noise)))
        self.images_made += len(out)
        return out

    def _ws(self, model: Loaded, samples: list[_Resolved]) -> torch.Tensor:
        """ws of every sample: one mapping call per truncation setting, then edits, then mixing."""
        import torch

        from train.directions import edit_ws
        from train.inference import seed_z

        plain = samples + [s.mix[0] for s in samples if s.mix is not None]
        gen = model.gen
        ws = torch.empty(len(plain), gen.num_ws, gen.G.w_dim, device=gen.device)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(plain):
            groups.setdefault((s.truncation, s.cutoff), []).append(i)
        for (truncation, cutoff), ids in groups.items():
            z = seed_z([plain[i].seed for i in ids], gen.z_dim)
            rows = [plain[i].row for i in ids]
            ws[ids] = gen.ws(z, rows, truncation=truncation, truncation_cutoff=cutoff)
        edits: dict[tuple, list[int]] = {}
        for i, s in enumerate(plain):
            if s.edits:
                edits.setdefault(s.edits, []).append(i)
        for key, ids in edits.items():
            ws[ids] = edit_ws(ws[ids], model.directions(), dict(key))
        partner = len(samples)
        for i, s in enumerate(samples):
            if s.mix is not None:
                ws[i, s.mix[1]] = ws[partner, s.mix[1]]
                partner += 1
        return ws[: len(samples)]


def _noise(gen: TrainedGenerator, modes: list[str], seeds: list[int]) -> list[torch.Tensor | None]:
    """Noise inputs for a chunk whose images may each ask for another mode; random noise by seed."""
    from train.inference import seed_noise

    synthesis = gen.G.synthesis
    if len(set(modes)) == 1 and modes[0] != "random":
        return synthesis.make_noise(len(modes), modes[0])
    noise = seed_noise(synthesis, seeds, gen.device)
    layers = [layer for block in synthesis.blocks for layer in block.layers]
    for per_layer, layer in zip(noise, layers, strict=True):
        for j, mode in enumerate(modes):
            if mode == "const":
                per_layer[j, 0] = layer.noise_const
            elif mode == "none":
                per_layer[j] = 0
    return noise


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
