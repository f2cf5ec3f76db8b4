"""Real images for the training loop: an order that is a pure function of (seed, position), and the
batches each process and gradient-accumulation round takes from it.

Global positions 0, 1, 2 … run through an endless stream of epochs, each a seeded permutation of the
images (and of their mirror images, with `mirror`). Step s's global batch is positions
[s·B, (s+1)·B) with B = world_size × rounds × batch_gpu, so resuming at any step is exact, on any
number of processes. Batches come from a decoded cache (on the GPU, or in pinned RAM) when the set
fits, else from DataLoader workers that decode them; both give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from curate.errors import InvalidArgument
from curate.processes import cpu_count, without_main_module, worker_context
from curate.progress import StageProgress
from train.dataset import TrainingSet

CACHE_MODES = ("auto", "gpu", "ram", "none")
CACHE_CAP = 8 << 30  # the default budget's ceiling per process: a quarter of RAM, at most this
PIECE = 64  # images a decode worker hands back at once


class ImageOrder:
    """Virtual indices 0 … size−1 (size = N, or 2N with `mirror`, where v ≥ N is image v − N flipped
    left-right) in epochs, each a permutation drawn from a generator seeded by (seed, epoch)."""

    def __init__(self, num_images: int, mirror: bool = False, seed: int = 0):
        if num_images < 1:
            raise InvalidArgument("an image order needs at least one image")
        if seed < 0:
            raise InvalidArgument(f"the data seed must be at least 0, got {seed}")
        self.num_images, self.mirror, self.seed = int(num_images), bool(mirror), int(seed)
        self._epochs: dict[int, np.ndarray] = {}  # a memo of recent epochs, not state: take is pure

    @property
    def size(self) -> int:
        return self.num_images * (2 if self.mirror else 1)

    def epoch(self, number: int) -> np.ndarray:
        """Epoch `number`'s permutation of the virtual indices (int64, read-only)."""
        if number not in self._epochs:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(number)]))
            permutation = rng.permutation(self.size).astype(np.int64)
            permutation.flags.writeable = False
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[number] = permutation
        return self._epochs[number]

    def take(self, start: int, count: int) -> np.ndarray:
        """The virtual indices at global positions start … start + count − 1 (int64)."""
        if start < 0 or count < 0:
            raise InvalidArgument(f"positions start at 0: take({start}, {count})")
        out = np.empty(count, np.int64)
        filled, position = 0, int(start)
        while filled < count:
            number, offset = divmod(position, self.size)
            n = min(self.size - offset, count - filled)
            out[filled : filled + n] = self.epoch(number)[offset : offset + n]
            filled, position = filled + n, position + n
        return out

    def images(self, virtual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, whether each is flipped) of virtual indices."""
        flipped = virtual >= self.num_images
        return np.where(flipped, virtual - self.num_images, virtual), flipped

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_epochs": {}}


def global_batch(batch_gpu: int, rounds: int = 1, world_size: int = 1) -> int:
    """Images per optimiser step over every process and round."""
    return world_size * rounds * batch_gpu


def round_start(
    step: int, round_index: int, rank: int, batch_gpu: int, rounds: int = 1, world_size: int = 1
) -> int:
    """The first global position of process `rank`'s round `round_index` of step `step`; the round
    takes batch_gpu positions from there. Ranks and rounds partition each global batch."""
    return step * global_batch(batch_gpu, rounds, world_size) + (rank * rounds + round_index) * batch_gpu


def default_cache_bytes() -> int:
    """A quarter of this machine's (or container's) memory, at most 8 GiB, shared by the training
    processes torchrun starts on it (each caches the whole set)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 16 << 30
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        memory = min(memory, int(limit)) if limit.isdigit() else memory
    except OSError:
        pass
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(memory // 4, CACHE_CAP) // local


def decoded_bytes(dataset: TrainingSet) -> int:
    """The decoded set's size: N × 3 × R × R bytes."""
    return dataset.num_images * 3 * dataset.resolution**2


class RealBatches:
    """This process's real images, round by round from `start_step`: `next(batches)` gives
    (images uint8 [batch_gpu, 3, R, R], labels float32 [batch_gpu, C]) on `device` for round
    `batches.round` of step `batches.step`, then moves on (rounds 0 … rounds−1, then the next step).

    `cache`: "gpu" (the decoded set on the device), "ram" (in RAM, pinned on CUDA), "none" (workers
    decode each batch), or "auto": cache when the decoded set fits `cache_bytes` (default
    `default_cache_bytes()`), on the GPU when it also fits in a quarter of its free memory (so build
    the networks first). `mode` says which was chosen. Every mode gives the same batches.
    """

    def __init__(
        self,
        dataset: TrainingSet,
        order: ImageOrder,
        device: torch.device | str,
        *,
        batch_gpu: int,
        rounds: int = 1,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        cache: str = "auto",
        workers: int | None = None,
        cache_bytes: int | None = None,
        prefetch: int = 4,
        progress: bool = True,
    ):
        if order.num_images != dataset.num_images:
            raise InvalidArgument(
                f"the order covers {order.num_images} images, the set has {dataset.num_images}"
            )
        if batch_gpu < 1 or rounds < 1 or world_size < 1 or not 0 <= rank < world_size or start_step < 0:
            raise InvalidArgument(
                f"batches need batch_gpu, rounds, world_size ≥ 1, 0 ≤ rank < world_size and start_step ≥ 0 "
                f"(got {batch_gpu}, {rounds}, {world_size}, rank {rank}, step {start_step})"
            )
        if cache not in CACHE_MODES:
            raise InvalidArgument(f"cache {cache!r}: choose one of {', '.join(CACHE_MODES)}")
        self.dataset, self.order, self.device = dataset, order, torch.device(device)
        self.batch_gpu, self.rounds, self.rank, self.world_size = batch_gpu, rounds, rank, world_size
        self.step, self.round = start_step, 0
        self.cuda = self.device.type == "cuda"
        self.workers = workers if workers is not None else _default_workers()
        self.mode = self._choose(cache, cache_bytes)
        self._labels = dataset.labels_tensor(self.device)
        self._epochs: dict[int, torch.Tensor] = {}
        self._stream: Iterator | None = None
        if self.mode == "none":
            self._stream = self._start_stream(prefetch)
        else:
            self._images = self._decode_all(progress)

    def _choose(self, cache: str, cache_bytes: int | None) -> str:
        need = decoded_bytes(self.dataset)
        if cache == "gpu" and not self.cuda:
            raise InvalidArgument(f"cache 'gpu' needs a CUDA device, not {self.device}")
        if cache != "auto":
            return cache
        if need > (cache_bytes if cache_bytes is not None else default_cache_bytes()):
            return "none"
        if self.cuda and need <= torch.cuda.mem_get_info(self.device)[0] // 4:
            return "gpu"
        return "ram"

    def labels_tensor(self) -> torch.Tensor:
        """Every image's labels, float32 [N, C] on the device (to draw labels for generated images)."""
        return self._labels

    def __iter__(self) -> RealBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is not None:
            images, labels = next(self._stream)
            if isinstance(images, str):
                raise InvalidArgument(images)
            batch = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        else:
            batch = self._cached(round_start(self.step, self.round, self.rank, *self._layout))
        self.round += 1
        if self.round == self.rounds:
            self.step, self.round = self.step + 1, 0
        return batch

    @property
    def _layout(self) -> tuple[int, int, int]:
        return self.batch_gpu, self.rounds, self.world_size

    def _cached(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """An index_select of the cache; indices come from the epoch's permutation already on the
        device, so nothing waits for the GPU."""
        virtual = self._device_take(start, self.batch_gpu)
        n = self.dataset.num_images
        flipped = virtual >= n
        index = torch.where(flipped, virtual - n, virtual)
        if self.mode == "gpu":
            images = self._images.index_select(0, index)
        else:
            host = torch.from_numpy(self.order.images(self.order.take(start, self.batch_gpu))[0])
            shape = (self.batch_gpu, *self._images.shape[1:])
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)  # a fresh pinned block:
            torch.index_select(self._images, 0, host, out=out)  # the allocator knows when copies end
            images = out.to(self.device, non_blocking=True)
        if self.order.mirror:
            images = torch.where(flipped[:, None, None, None], images.flip(3), images)
        return images, self._labels.index_select(0, index)

    def _device_take(self, start: int, count: int) -> torch.Tensor:
        size, parts, position = self.order.size, [], start
        while count > 0:
            number, offset = divmod(position, size)
            n = min(size - offset, count)
            parts.append(self._device_epoch(number)[offset : offset + n])
            count, position = count - n, position + n
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _device_epoch(self, number: int) -> torch.Tensor:
        if number not in self._epochs:
            host = torch.from_numpy(self.order.epoch(number).copy())
            if self.cuda:
                host = host.pin_memory()
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[number] = host.to(self.device, non_blocking=True)
        return self._epochs[number]

    def _decode_all(self, progress: bool) -> torch.Tensor:
        """Every image decoded once, by DataLoader workers, into one uint8 [N, 3, R, R] tensor."""
        ds, r = self.dataset, self.dataset.resolution
        shape = (ds.num_images, 3, r, r)
        if self.mode == "gpu":
            cache = torch.empty(shape, dtype=torch.uint8, device=self.device)
        else:
            try:
                cache = torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda)
            except RuntimeError:  # pinning so much can fail (limits): pageable memory still works
                cache = torch.empty(shape, dtype=torch.uint8)
        blocks = ds.blocks()
        workers = min(self.workers, len(blocks))
        loader = DataLoader(
            _DecodeBlocks(ds, blocks),
            batch_size=None,
            num_workers=workers,
            collate_fn=_as_is,
            multiprocessing_context=worker_context() if workers else None,
            prefetch_factor=4 if workers else None,
        )
        with StageProgress("decode images", ds.num_images, unit="images", enabled=progress) as bar:
            with without_main_module():
                pieces = iter(loader)
            for first, pixels in pieces:
                if isinstance(pixels, str):
                    raise InvalidArgument(pixels)
                cache[first : first + len(pixels)] = torch.from_numpy(pixels).to(cache.device)
                bar.advance(len(pixels), pixels.nbytes)
        return cache

    def _start_stream(self, prefetch: int) -> Iterator:
        workers = self.workers
        loader = DataLoader(
            _Images(self.dataset, self.order),
            batch_sampler=_Rounds(self.order, self.step, self.rank, *self._layout),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.cuda,
            persistent_workers=workers > 0,
            prefetch_factor=prefetch if workers else None,
            multiprocessing_context=worker_context() if workers else None,
        )
        with without_main_module():
            return iter(loader)

    def close(self) -> None:
        """Stop the decode workers (streaming) and let go of the cache."""
        stream, self._stream = self._stream, None
        if stream is not None and hasattr(stream, "_shutdown_workers"):
            stream._shutdown_workers()
        self._images = None

    def __enter__(self) -> RealBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_workers() -> int:
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(16, cpu_count() // local))


def _as_is(item: Any) -> Any:
    return item


class _DecodeBlocks(IterableDataset):
    """Worker k of K decodes blocks k, k+K, … and hands back (first index, uint8 [n, 3, R, R]) pieces;
    a failure comes back as (index, message) and ends the worker's share."""

    def __init__(self, dataset: TrainingSet, blocks: list[range]):
        self.dataset, self.blocks = dataset, blocks

    def __iter__(self) -> Iterator[tuple[int, np.ndarray | str]]:
        info = get_worker_info()
        share = self.blocks[info.id :: info.num_workers] if info else self.blocks
        try:
            for block in share:
                first, pixels = block.start, []
                for index, image in self.dataset.images_in(block):
                    pixels.append(image)
                    if len(pixels) == PIECE:
                        yield first, np.stack(pixels)
                        first, pixels = index + 1, []
                if pixels:
                    yield first, np.stack(pixels)
        except InvalidArgument as exc:
            yield -1, str(exc)


class _Rounds(Sampler):
    """The virtual indices of each of this process's rounds from `start_step` on, forever."""

    def __init__(
        self, order: ImageOrder, start_step: int, rank: int, batch_gpu: int, rounds: int, world: int
    ):
        self.order, self.start_step, self.rank = order, start_step, rank
        self.batch_gpu, self.rounds, self.world = batch_gpu, rounds, world

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            for a in range(self.rounds):
                start = round_start(step, a, self.rank, self.batch_gpu, self.rounds, self.world)
                yield self.order.take(start, self.batch_gpu).tolist()
            step += 1


class _Images(Dataset):
    """A virtual index → (uint8 [3, R, R], flipped when mirrored; its labels), or an error message."""

    def __init__(self, dataset: TrainingSet, order: ImageOrder):
        self.dataset, self.num_images = dataset, order.num_images

    def __getitem__(self, virtual: int) -> tuple[np.ndarray | None, Any]:
        index = virtual - self.num_images if virtual >= self.num_images else virtual
        try:
            pixels = self.dataset.image(index)
        except InvalidArgument as exc:
            return None, str(exc)
        if virtual >= self.num_images:
            pixels = pixels[:, :, ::-1]
        return pixels, self.dataset.labels[index]


def _collate(items: list[tuple[np.ndarray | None, Any]]) -> tuple[Any, Any]:
    for pixels, message in items:
        if pixels is None:
            return message, None
    images = torch.from_numpy(np.stack([pixels for pixels, _ in items]))
    labels = torch.from_numpy(np.stack([labels for _, labels in items]).astype(np.float32, copy=False))
    return images, labels
