"""Worker processes for CPU-bound stages: started cleanly, bounded in memory, never outliving their run."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def worker_context() -> Any:
    """forkserver where the platform has it (no fork of a threaded parent), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def cpu_count() -> int:
    """CPUs this process may run on (affinity and cgroup-pinned containers), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextmanager
def without_main_module() -> Iterator[None]:
    """Start workers without importing the caller's `__main__`: their code lives in this package, and a
    script with no `__main__` guard (or read from stdin) would otherwise run again, or fail, in each."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__file__", "__spec__") if hasattr(main, name)}
    try:
        if "__spec__" in saved:
            main.__spec__ = None  # type: ignore[union-attr]
        if "__file__" in saved:
            del main.__file__  # type: ignore[union-attr]
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Keep a worker's memory flat: glibc gives each busy thread a heap that keeps its peak, so RSS climbs
    for thousands of posts (measured: 40 to 95 MB a worker) before it levels off. Two heaps hold it near
    45 MB at the same speed. Elsewhere than glibc there is nothing to tune."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX


def exit_with(parent_pid: int) -> None:
    """Start a watcher thread that ends this worker when `parent_pid` is gone."""
    threading.Thread(target=wait_for_exit, args=(parent_pid,), daemon=True).start()


def wait_for_exit(parent_pid: int) -> None:
    """Die with the parent run: a SIGKILLed run would otherwise leave workers landing files behind its back.

    The parent's pid is polled because a worker's parent is the fork server, not the run itself.
    """
    while True:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass  # alive, under another user (the pid was reused): keep going
        time.sleep(0.2)
