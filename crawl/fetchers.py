"""Where downloads run: threads in this process, or worker processes that each run their own threads.

Fetching and checking an image costs several milliseconds of CPU. Under a polite rate limit that is
nothing, but against a fast mirror one Python process tops out where its threads fight over the
interpreter lock (measured here: two processes together fetch about a third more than one process with
the same number of threads). So for an unlimited or fast rate the crawl starts one worker process per
core, each with its share of the threads and of the rate limit.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from crawl.download import Limits, StoredImage, download_image
from crawl.http import FetchError, HttpClient, RetryPolicy
from curate.errors import CurateError
from curate.images import ImageCheckError
from curate.processes import exit_with, limit_malloc_arenas, without_main_module, worker_context
from curate.workspace import Workspace

log = logging.getLogger(__name__)

# Below this many requests/s one process keeps up with the limiter; at 0 (unlimited) or above, CPU decides.
FAST_RATE = 50.0
MIN_POSTS_FOR_PROCESSES = 200  # starting workers costs about a second: not worth it for a handful of posts


@dataclass(frozen=True)
class FetchSettings:
    """What a downloader needs, picklable so worker processes get the same."""

    base_url: str
    rate: float
    concurrency: int
    timeout: tuple[float, float]
    retry: RetryPolicy
    allow_hosts: tuple[str, ...]
    workspace: Path
    scratch: Path
    limits: Limits
    reuse: bool

    def client(self, *, rate: float, pool_size: int) -> HttpClient:
        return HttpClient(
            self.base_url,
            rate=rate,
            pool_size=pool_size,
            timeout=self.timeout,
            retry=self.retry,
            allow_hosts=self.allow_hosts,
        )


class WorkerDied(CurateError):
    """A download worker process ended unexpectedly; the crawl stops, keeping what it recorded."""

    def __init__(self, message: str):
        super().__init__(f"{message}; run the same command again to resume, or use --processes 1")


class Fetcher(Protocol):
    retries: int

    def submit(self, url: str, expected_md5: str | None) -> Future[StoredImage]: ...

    def close(self, *, cancel: bool = False) -> None: ...


def auto_processes(rate: float, limit: int) -> int:
    """How many processes suit a crawl: one per core (at most 4) when CPU, not the rate limit, decides."""
    if limit < MIN_POSTS_FOR_PROCESSES or 0 < rate < FAST_RATE:
        return 1
    return max(1, min(os.cpu_count() or 1, 4))


class ThreadFetcher:
    """Downloads in a thread pool sharing the board's client, so listing and images share one limiter."""

    def __init__(self, settings: FetchSettings, http: HttpClient):
        self.settings, self.http = settings, http
        self.ws = Workspace(settings.workspace)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="fetch")

    @property
    def retries(self) -> int:
        return 0  # counted by the board's client, which these threads share

    def submit(self, url: str, expected_md5: str | None) -> Future[StoredImage]:
        s = self.settings
        return self.pool.submit(
            download_image, self.http, self.ws, url, s.scratch, expected_md5=expected_md5, limits=s.limits,
            reuse=s.reuse,
        )  # fmt: skip

    def close(self, *, cancel: bool = False) -> None:
        self.pool.shutdown(wait=True, cancel_futures=cancel)


class ProcessFetcher:
    """Downloads in worker processes, each with its own threads; results come back through a queue."""

    def __init__(self, settings: FetchSettings, processes: int):
        context = worker_context()
        threads = max(1, -(-settings.concurrency // processes))
        rate = settings.rate / processes  # equal shares keep the total at the limit without shared state
        self.tasks: Any = context.Queue()
        self.results: Any = context.Queue()
        self.workers = [
            context.Process(
                target=_serve,
                args=(settings, index, threads, rate, self.tasks, self.results, os.getpid()),
                name=f"curate-fetch-{index}",
                daemon=True,
            )
            for index in range(processes)
        ]
        with without_main_module():
            for worker in self.workers:
                worker.start()
        self._broken: WorkerDied | None = None
        self._closing = False
        self._futures: dict[int, Future[StoredImage]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._retries = [0] * processes
        self._collector = threading.Thread(target=self._collect, name="fetch-results", daemon=True)
        self._collector.start()

    @property
    def retries(self) -> int:
        return sum(self._retries)

    def submit(self, url: str, expected_md5: str | None) -> Future[StoredImage]:
        future: Future[StoredImage] = Future()
        task_id = next(self._ids)
        with self._lock:
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            self._futures[task_id] = future
        self.tasks.put((task_id, url, expected_md5))
        return future

    def _fail_all(self, error: WorkerDied) -> None:
        with self._lock:
            self._broken = error
            pending, self._futures = list(self._futures.values()), {}
        for future in pending:
            future.set_exception(error)

    def close(self, *, cancel: bool = False) -> None:
        """Let the workers finish what they hold and stop, or with `cancel` stop them at once."""
        self._closing = True
        if cancel:
            for worker in self.workers:
                worker.terminate()
            for worker in self.workers:
                worker.join()
            # A worker killed mid-write may leave a queue unusable: do not wait on it (the collector is a
            # daemon thread), and give up what never came back: it is fetched again next run.
            for channel in (self.tasks, self.results):
                channel.cancel_join_thread()
            with self._lock:
                pending, self._futures = list(self._futures.values()), {}
            for future in pending:
                future.cancel()
            return
        for _ in self.workers:
            self.tasks.put(None)
        for worker in self.workers:
            worker.join()
        self.results.put(None)  # after the workers' own results, so the collector sees every one
        self._collector.join()

    def _collect(self) -> None:
        while True:
            try:
                item = self.results.get(timeout=0.5)
            except queue.Empty:
                dead = [w for w in self.workers if w.exitcode not in (None, 0)]
                if dead and not self._closing:
                    self._fail_all(
                        WorkerDied(f"a download worker process died (exit code {dead[0].exitcode})")
                    )
                    return
                continue
            if item is None:
                return
            task_id, worker, retries, stored, error = item
            self._retries[worker] = retries
            with self._lock:
                future = self._futures.pop(task_id, None)
            if future is None:
                continue
            if error is None:
                future.set_result(stored)
            else:
                future.set_exception(FetchError(*error))


def _serve(
    settings: FetchSettings,
    index: int,
    threads: int,
    rate: float,
    tasks: Any,
    results: Any,
    crawl_pid: int,
) -> None:
    """A worker process: fetch what the queue hands out with `threads` threads until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the crawl decides
    limit_malloc_arenas()
    exit_with(crawl_pid)
    http = settings.client(rate=rate, pool_size=threads)
    ws = Workspace(settings.workspace)
    free = threading.BoundedSemaphore(threads)  # take a task only when a thread can start on it

    def fetch(task_id: int, url: str, expected_md5: str | None) -> None:
        stored, error = None, None
        try:
            stored = download_image(
                http, ws, url, settings.scratch, expected_md5=expected_md5, limits=settings.limits,
                reuse=settings.reuse,
            )  # fmt: skip
        except (FetchError, ImageCheckError) as err:
            error = (err.code, err.message)
        except Exception as err:  # a bug must cost one row, not the crawl
            error = ("internal_error", repr(err))
        finally:
            free.release()
        results.put((task_id, index, http.retries, stored, error))

    with ThreadPoolExecutor(threads, thread_name_prefix=f"fetch{index}") as pool:
        while True:
            free.acquire()
            task = tasks.get()
            if task is None:
                break
            pool.submit(fetch, *task)
