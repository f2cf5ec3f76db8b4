"""A rich progress bar for long stages: items/s and MB/s; silent when disabled or not on a terminal."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StageProgress:
    """Counts items and bytes; the bar shows both rates since the stage started."""

    def __init__(self, description: str, total: int | None, *, unit: str = "items", enabled: bool = True):
        self.unit = unit
        self.items = 0
        self.bytes = 0
        self._start = time.monotonic()
        self._progress = (
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            if enabled
            else None
        )
        self._task = self._progress.add_task(description, total=total, rates="") if self._progress else None

    def __enter__(self) -> StageProgress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if self._progress:
            self._refresh()
            self._progress.stop()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes
        if self._progress:
            self._refresh()

    def _refresh(self) -> None:
        assert self._progress is not None and self._task is not None
        seconds = max(self.elapsed, 1e-6)
        rates = f"{self.items / seconds:.1f} {self.unit}/s"
        if self.bytes:
            rates += f"  {self.bytes / seconds / 1e6:.1f} MB/s"
        self._progress.update(self._task, completed=self.items, rates=rates)
