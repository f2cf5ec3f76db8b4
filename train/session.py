"""A training session: the tick loop around a Trainer, with progress, metrics, grids and snapshots.

Only rank 0 writes. Ctrl-C (or SIGTERM, which torchrun sends its workers) finishes the current step,
writes a snapshot and stops; a second Ctrl-C stops at once. A NaN or infinite loss, checked at each
tick, stops the run before any snapshot of the diverged state is written.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from curate import __version__
from curate.errors import CurateError
from curate.manifest import now_utc
from train.runs import METRICS_FILE, TrainOptions, options_record

STOP_CHECK_STEPS = 16  # how often processes agree on a Ctrl-C (a host sync)


class TrainingDiverged(CurateError):
    """A loss became NaN or infinite."""


@dataclass
class TrainReport:
    out: Path
    nimg: int
    kimg_target: float
    resumed_from: int | None = None  # nimg of the snapshot continued from
    snapshot: Path | None = None  # the newest snapshot written
    interrupted: bool = False
    up_to_date: bool = False
    seconds: float = 0.0
    last_tick: dict = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    initialised: object | None = None  # what --init copied (train.transfer.TransferReport)
    measured: dict[str, float] = field(default_factory=dict)  # the latest --metrics values


class TrainingSession:
    """A Trainer with its data, run folder and report; `run()` trains up to `options.kimg`."""

    def __init__(
        self, options: TrainOptions, trainer, dataset, run: Path, world, device, report: TrainReport
    ):
        from train.grids import grid_inputs

        self.options, self.trainer, self.dataset, self.run_dir = options, trainer, dataset, run
        self.world, self.device, self.report = world, device, report
        self.tick = 0
        self.rng_state: dict | None = None  # the snapshot's RNG states, restored once the loader runs
        c_dim = trainer.network.c_dim
        self.grid = grid_inputs(
            dataset.labels[:, :c_dim], dataset.label_names, trainer.network.z_dim, options.seed
        )

    def run(self) -> TrainReport:
        """Train until `options.kimg`, an interrupt, or divergence; the report says which."""
        import torch

        if self.report.up_to_date:
            return self.report

        from train.loader import ImageOrder, RealBatches

        options, trainer, world = self.options, self.trainer, self.world
        settings = trainer.settings
        target = int(options.kimg * 1000)
        reals = RealBatches(
            self.dataset,
            ImageOrder(len(self.dataset), options.mirror, options.seed),
            self.device,
            batch_gpu=settings.batch_gpu,
            rounds=settings.rounds,
            rank=world.rank,
            world_size=world.size,
            start_step=trainer.step,
            cache=options.cache,
            cache_bytes=int(options.cache_gb * 2**30) if options.cache_gb is not None else None,
            workers=options.workers,
            progress=options.progress and world.main,
        )
        if self.rng_state is not None:
            from train.snapshot import restore_rng_states

            # after the loader, whose workers take seeds from the global generator as they start
            restore_rng_states(self.rng_state)
        if world.main and self.report.resumed_from is None:
            self._write_grid("fakes-init.png")
        began = tick_began = time.monotonic()
        tick_start = trainer.nimg
        with (
            reals,
            _stop_requests() as stop,
            _Progress(options, trainer.nimg, target, world.main) as progress,
        ):
            while trainer.nimg < target:
                trainer.run_step([next(reals) for _ in range(settings.rounds)])
                progress.advance(trainer.nimg)
                if self._should_stop(stop):
                    self.report.interrupted = True
                    break
                if trainer.nimg >= target or trainer.nimg - tick_start >= options.tick_kimg * 1000:
                    now = time.monotonic()
                    self._end_tick(tick_start, now - tick_began, progress, final=trainer.nimg >= target)
                    tick_start, tick_began = trainer.nimg, now
            if self.report.interrupted:
                if trainer.diverged():
                    raise self._diverged()
                self._snapshot()
        self.report.nimg, self.report.seconds = trainer.nimg, time.monotonic() - began
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.report

    def _should_stop(self, stop: _StopFlag) -> bool:
        from train.sync import any_across

        if self.world.size == 1:
            return stop.requested
        if self.trainer.step % STOP_CHECK_STEPS:
            return False
        return any_across(stop.requested, self.world, self.device)

    def _end_tick(self, tick_start: int, seconds: float, progress: _Progress, *, final: bool) -> None:
        import torch

        trainer = self.trainer
        stats = trainer.take_stats()
        if trainer.diverged():
            raise self._diverged()
        self.tick += 1
        images = trainer.nimg - tick_start
        record = {
            "tick": self.tick,
            "kimg": round(trainer.nimg / 1000, 3),
            "nimg": trainer.nimg,
            "step": trainer.step,
            "sec_per_kimg": seconds / max(images / 1000, 1e-9),
            "images_per_sec": images / max(seconds, 1e-9),
            **stats,
            "augment_p": float(trainer.augment.p) if trainer.augment is not None else 0.0,
            "time": now_utc().isoformat(),
        }
        if self.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        snapshot_tick = final or self.tick % self.options.snap_ticks == 0
        if snapshot_tick and self.options.metrics:
            with progress.paused():  # the metrics draw their own bars
                record.update(self._measure())
        self.report.last_tick = record
        if self.world.main:
            with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        progress.tick(record)
        if snapshot_tick:
            self._snapshot()

    def _snapshot(self) -> None:
        """Write the snapshot and its grid (rank 0; every process passes here together)."""
        from train.snapshot import rng_states, save_snapshot, slim_older_snapshots, snapshot_name

        trainer = self.trainer
        if not self.world.main:
            return
        path = self.run_dir / snapshot_name(trainer.nimg)
        save_snapshot(
            path,
            {
                "trainer": trainer.state_dict(),
                "tick": self.tick,
                "rng": rng_states(),
                "options": options_record(self.options),
                "network": trainer.network.as_dict(),
                "hyperparameters": trainer.hyper.as_dict(),
                "label_names": self.report.label_names,
                "dataset": self.dataset.describe(),
                "curate_version": __version__,
                "created_at": now_utc().isoformat(),
            },
        )
        self.report.snapshot = path
        slim_older_snapshots(self.run_dir)
        self._write_grid(f"fakes-{path.stem.removeprefix('snapshot-')}.png")

    def _measure(self) -> dict[str, float]:
        """--metrics on G_ema now (rank 0; the others wait at the next step's all-reduce)."""
        if not self.world.main:
            return {}
        from train.quality import measure_generator

        values = measure_generator(
            self.trainer.G_ema,
            self.dataset,
            self.options.metrics,
            self.device,
            n=self.options.metrics_n,
            seed=self.options.seed,
            progress=self.options.progress,
        )
        self.report.measured = values
        return values

    def _write_grid(self, name: str) -> None:
        from train.grids import render_grid, save_grid

        grid = render_grid(self.trainer.G_ema, self.grid, self.device)
        save_grid(self.run_dir / name, grid, self.trainer.network.resolution, self.grid.row_names)

    def _diverged(self) -> TrainingDiverged:
        from train.snapshot import latest_snapshot

        last = latest_snapshot(self.run_dir)
        kept = f"the last good snapshot is {last}" if last else "no snapshot was written yet"
        return TrainingDiverged(
            f"a loss became NaN or infinite before kimg {self.trainer.nimg / 1000:.1f}: training stopped and "
            f"{kept}. Resume from it with a smaller --lr, a larger --gamma or --precision fp32."
        )


class _StopFlag:
    requested = False


@contextmanager
def _stop_requests() -> Iterator[_StopFlag]:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step; a second Ctrl-C stops at once."""
    flag = _StopFlag()
    previous = {}

    def ask(signum, frame):
        if flag.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        flag.requested = True

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, ask)
    except ValueError:  # not the main thread: no handlers, Ctrl-C behaves as Python's default
        previous.clear()
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Progress:
    """A bar in kimg with the latest tick's figures; a line per tick above it."""

    def __init__(self, options: TrainOptions, nimg: int, target: int, main: bool):
        self.enabled = options.progress and main
        self.bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.fields[kimg]} / {task.fields[total_kimg]} kimg"),
                TextColumn("{task.fields[figures]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self.task = self.bar.add_task(
                "train", total=target, completed=nimg, kimg=f"{nimg / 1000:.1f}",
                total_kimg=f"{target / 1000:g}", figures="",
            )  # fmt: skip

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar off its line while another bar runs, then back."""
        if self.bar is None:
            yield
            return
        self.bar.stop()
        try:
            yield
        finally:
            self.bar.start()

    def advance(self, nimg: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=nimg, kimg=f"{nimg / 1000:.1f}")

    def tick(self, record: dict) -> None:
        if self.bar is None:
            return
        parts = [
            f"{record['sec_per_kimg']:.1f} s/kimg",
            f"{record['images_per_sec']:.0f} img/s",
            *(f"{k} {record[k]:.3f}" for k in ("loss_G", "loss_D") if k in record),
            f"p {record['augment_p']:.3f}",
        ]
        if "gpu_mem_gb" in record:
            parts.append(f"{record['gpu_mem_gb']:.1f} GB")
        figures = "  ".join(parts)
        self.bar.update(self.task, figures=figures)
        self.bar.console.print(
            f"tick {record['tick']:>4}  kimg {record['kimg']:>9.1f}  {figures}", highlight=False
        )
