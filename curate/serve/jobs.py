"""The filter run again in the background: one job at a time, in a thread, with its progress to poll.

The filter writes its manifest through atomic parts, so a server killed mid-run leaves whole parts only
(faces not yet written keep the previous filter's rows); the job's state lives in memory only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from curate.errors import CurateError
from curate.manifest import FILTER, part_files, part_metadata
from curate.workspace import Workspace


class JobRunning(CurateError):
    """A filter job is already running (the API answers 409)."""


@dataclass
class JobState:
    state: str = "idle"  # idle | running | done | failed
    step: str | None = None
    fraction: float = 0.0
    started_at: float | None = None  # seconds since the epoch
    finished_at: float | None = None
    message: str | None = None  # why it failed
    report: dict[str, Any] | None = None  # the filter's report once done


class FilterJob:
    """Runs `curate filter` again with the options its newest part recorded, review seeds included."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._lock = threading.Lock()
        self._state = JobState()
        self._thread: threading.Thread | None = None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._state)

    def start(self) -> dict[str, Any]:
        """Start the job; JobRunning when one is running already."""
        with self._lock:
            if self._state.state == "running":
                raise JobRunning("the filter is already running: wait for it to finish")
            self._state = JobState(state="running", step="starting", started_at=time.time())
            self._thread = threading.Thread(target=self._run, name="curate-filter", daemon=True)
            self._thread.start()
            return asdict(self._state)

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _progress(self, step: str, fraction: float) -> None:
        with self._lock:
            self._state.step, self._state.fraction = step, max(0.0, min(1.0, float(fraction)))

    def _run(self) -> None:
        try:
            report = run_filter(self.ws, self._progress)
        except Exception as error:  # a failed job shows the filter's own message, and the server lives on
            message = str(error) if isinstance(error, CurateError) else f"{type(error).__name__}: {error}"
            with self._lock:
                self._state.state, self._state.message = "failed", message
                self._state.finished_at = time.time()
            return
        with self._lock:
            self._state.state, self._state.step, self._state.fraction = "done", "done", 1.0
            self._state.report, self._state.finished_at = report, time.time()


def run_filter(ws: Workspace, on_progress) -> dict[str, Any]:
    """The filter with the newest filter part's options (defaults when it never ran) and review seeds."""
    from embed.filter import FilterOptions, filter_faces

    parts = part_files(ws, FILTER)
    options = FilterOptions.from_params(part_metadata(parts[-1])["params"]) if parts else FilterOptions()
    options.review, options.on_progress = True, on_progress
    report = filter_faces(ws.root, options)
    return {
        "faces": report.faces,
        "kept": report.kept,
        "good_seeds": report.good_seeds,
        "bad_seeds": report.bad_seeds,
        "threshold": report.threshold,
        "estimated_precision": report.estimated_precision,
        "target_met": report.target_met,
        "reasons": dict(report.reasons),
    }
