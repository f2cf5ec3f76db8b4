"""Benchmark `curate crawl` against a plain sequential `requests` loop, both fetching from a loopback board.

Two settings, each with its own fakebooru subprocess serving distinct bytes per post, rate limit off:
(a) 50 ms added to every response, as on a real network: target >= 10x the sequential loop;
(b) no added latency: target >= 200 posts/s, images fully checked and stored; memory stays flat.

Run from the repo root: ``python tests/bench/crawl.py [--quick]``. Prints one JSON line on stdout;
everything else goes to stderr. Exits 0 even when a target is missed: `met_targets` says.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# Run as a script, this folder heads sys.path and this file would shadow the `crawl` package.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from crawl.board import CrawlOptions, crawl_board  # noqa: E402
from curate.manifest import OK  # noqa: E402
from tests.fakebooru import fixture_dir  # noqa: E402

TAGS = "1girl"
TARGET_SPEEDUP = 10
TARGET_POSTS_PER_S = 200
# "Flat" has no number in the issue; this allows allocator noise, not a per-post leak (1,500 posts apart).
TARGET_RSS_GROWTH_MB = 32
PAGE_SIZE = 1000
DEFAULT_CONCURRENCY = next(f.default for f in dataclasses.fields(CrawlOptions) if f.name == "concurrency")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the server ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(posts: int, latency: float) -> Iterator[tuple[str, int]]:
    """A fakebooru subprocess (its CPU and GIL apart from the crawler's); yields (base URL, pid)."""
    images = fixture_dir() / "images" / "faces"
    command = [sys.executable, "-m", "tests.fakebooru", "--images", str(images), "--posts", str(posts)]
    command += ["--latency", str(latency), "--distinct", "--port", "0"]
    proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"fakebooru did not start (said {line!r}, exit {proc.poll()})")
        # Drain anything it prints later, so a full pipe can never stall the server.
        threading.Thread(target=_copy_to_stderr, args=(proc.stdout,), daemon=True).start()
        SERVERS.add(proc.pid)
        yield line.split()[1], proc.pid
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the server's signal to stop
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _copy_to_stderr(stream: io.TextIOBase) -> None:
    for line in stream:
        sys.stderr.write(line)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" closing the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the sequential baseline -----------------------------------------------------------------------------


def sequential(base_url: str, posts: int, dest: Path) -> dict[str, float]:
    """A plain requests loop: list pages, then GET each file one after another and write it; no checks."""
    start = time.perf_counter()
    total = 0
    with requests.Session() as session:
        urls: list[str] = []
        pid = 0
        while len(urls) < posts:
            params = {"page": "dapi", "s": "post", "q": "index", "tags": TAGS}
            params.update(limit=str(min(posts, PAGE_SIZE)), pid=str(pid))
            response = session.get(f"{base_url}/index.php", params=params, timeout=30)
            response.raise_for_status()
            found = [p.get("file_url") or "" for p in ET.fromstring(response.content).iter("post")]
            if not found:
                break
            urls += [urljoin(base_url + "/", u) for u in found]
            pid += 1
        urls = urls[:posts]
        for i, url in enumerate(urls):
            response = session.get(url, timeout=30)
            response.raise_for_status()
            (dest / str(i)).write_bytes(response.content)
            total += len(response.content)
    seconds = time.perf_counter() - start
    return {"posts": len(urls), "seconds": seconds, "bytes": total, "posts_per_s": len(urls) / seconds}


# -- curate ----------------------------------------------------------------------------------------------


SERVERS: set[int] = set()  # fakebooru pids: our children, but not the crawl's cost


def crawl_pids() -> list[int]:
    """This process and its descendants (download workers hang under the fork server), servers left out."""
    pids, index = [os.getpid()], 0
    while index < len(pids):
        pid = pids[index]
        index += 1
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                    pids += [int(c) for c in children if int(c) not in SERVERS]
    return pids


def rss_mb() -> float:
    """Resident memory of the crawl: this process and its workers."""
    total = 0
    for pid in crawl_pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as handle:
            total += int(handle.read().split()[1])
    return total * PAGE_BYTES / MB


class TreeCpu:
    """CPU seconds of the crawl's process tree; workers are sampled while alive, since they exit first."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def __enter__(self) -> TreeCpu:
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for pid in crawl_pids():
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu_seconds(pid))

    def _run(self) -> None:
        while not self._stop.wait(0.1):  # workers live for the whole crawl: coarse sampling loses little
            self._sample()

    @property
    def seconds(self) -> float:
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.seen.items())


def count_files(folder: Path) -> int:
    """Files one level down (images/ab/<md5>.ext), as the crawl lands them."""
    count = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as shards:
        for shard in shards:
            with contextlib.suppress(FileNotFoundError), os.scandir(shard.path) as entries:
                count += sum(1 for _ in entries)
    return count


class RssSampler:
    """Samples this process's RSS every 20 ms, and the images landed every ~0.2 s, in a background thread."""

    def __init__(self, images: Path, interval: float = 0.02, count_every: int = 10):
        self.images, self.interval, self.count_every = images, interval, count_every
        self.samples: list[tuple[float, float, int]] = []  # (seconds since start, RSS MB, images landed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        landed = 0
        tick = 0
        while True:
            if tick % self.count_every == 0:
                landed = count_files(self.images)
            self.samples.append((time.perf_counter() - self._start, rss_mb(), landed))
            tick += 1
            if self._stop.wait(self.interval):
                return

    def peak(self) -> float:
        return max((s[1] for s in self.samples), default=rss_mb())

    def at_fraction(self, posts: int, fraction: float) -> float:
        """RSS when `fraction` of the posts had landed; by time fraction if they never did."""
        for _, rss, landed in self.samples:
            if landed >= fraction * posts:
                return rss
        if not self.samples:
            return rss_mb()
        end = self.samples[-1][0]
        return next(rss for t, rss, _ in self.samples if t >= fraction * end)


def run_curate(base_url: str, posts: int, concurrency: int, *, memory: bool = False) -> dict[str, float]:
    """Crawl `posts` posts into a fresh temp workspace; with `memory`, sample RSS while it runs."""
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        workspace = Path(tmp) / "ws"
        options = CrawlOptions(
            tags=TAGS, limit=posts, base_url=base_url, rate=0, concurrency=concurrency, tag_categories=True
        )
        gc.collect()
        before = rss_mb()
        sampler = RssSampler(workspace / "images") if memory else contextlib.nullcontext()
        start = time.perf_counter()
        # The crawl may print; stdout is kept for the one JSON line.
        with TreeCpu() as tree_cpu, sampler, contextlib.redirect_stdout(sys.stderr):
            report = crawl_board(workspace, options, progress=False)
        seconds = time.perf_counter() - start
        cpu = tree_cpu.seconds
        end = rss_mb()
        stored = count_files(workspace / "images")
    ok = sum(n for (status, _), n in report.outcomes.items() if status == OK)
    result: dict[str, float] = {
        "posts": report.written,
        "listed": report.listed,
        "ok": ok,
        "failed": report.written - ok + max(0, posts - report.written),
        "stored_files": stored,
        "seconds": seconds,
        "cpu_s": cpu,
        "bytes": report.bytes,
        "retries": report.retries,
        "posts_per_s": ok / seconds,
        "mb_per_s": report.bytes / MB / seconds,
    }
    if ok != posts:
        bad = {f"{s}:{e}": n for (s, e), n in report.outcomes.items() if s != OK}
        log(f"warning: {ok} of {posts} rows ok; others: {bad}")
    if isinstance(sampler, RssSampler):
        result.update(
            rss_mb_before=before,
            rss_mb_peak=max(sampler.peak(), end),
            rss_mb_at_25pct=sampler.at_fraction(posts, 0.25),
            rss_mb_at_end=end,
            # Workers exit before the crawl returns, so growth is read while they still run.
            rss_mb_at_95pct=sampler.at_fraction(posts, 0.95),
        )
    return result


# -- profiling (diagnostic, not part of the figures) -----------------------------------------------------


def profile_crawl(base_url: str, posts: int, concurrency: int, top: int) -> None:
    """Crawl once more under cProfile in every thread (CPU clock), and print the top functions to stderr."""
    workers: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_in_thread(frame: object, event: str, arg: object) -> None:
        # Runs on a new thread's first event; enabling replaces this hook for that thread.
        profile = cProfile.Profile(time.thread_time)
        with lock:
            workers.append(profile)
        profile.enable()

    main_profile = cProfile.Profile(time.thread_time)
    threading.setprofile(start_in_thread)
    main_profile.enable()
    try:
        run_curate(base_url, posts, concurrency)
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    for title, profiles in (("main thread", [main_profile]), ("download threads", workers)):
        if not profiles:
            continue
        out = io.StringIO()
        stats = pstats.Stats(profiles[0], stream=out)
        for more in profiles[1:]:
            stats.add(more)
        out.write(f"== {title} ({len(profiles)}), CPU seconds, by cumulative ==\n")
        stats.sort_stats("cumulative").print_stats(top)
        out.write(f"== {title}, by own time ==\n")
        stats.sort_stats("tottime").print_stats(top)
        sys.stderr.write(out.getvalue())


# -- main ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/bench/crawl.py", description=__doc__)
    parser.add_argument("--posts", type=int, default=None, help="posts per setting (default 2000)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added per response in (a)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument(
        "--baseline-posts",
        type=int,
        default=None,
        help="posts the sequential loop fetches in (a), its rate taken on this subset (default 200)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 120 posts, baseline 30")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile a no-latency crawl; top N to stderr"
    )
    args = parser.parse_args(argv)
    if args.posts is None:
        args.posts = 120 if args.quick else 2000
    if args.baseline_posts is None:
        args.baseline_posts = 30 if args.quick else 200
    args.baseline_posts = min(args.baseline_posts, args.posts)
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run both settings and return the figures (also printed as one JSON line on stdout)."""
    args = parse_args(argv)
    posts, concurrency = args.posts, args.concurrency

    log(f"(a) {posts} posts, {args.latency * 1000:.0f} ms latency, concurrency {concurrency}")
    with serve(posts, args.latency) as (url, _), tempfile.TemporaryDirectory(prefix="seq-bench-") as tmp:
        seq_a = sequential(url, args.baseline_posts, Path(tmp))
        log(f"    sequential: {seq_a['posts']} posts in {seq_a['seconds']:.1f} s")
        cur_a = run_curate(url, posts, concurrency)
        log(f"    curate: {cur_a['ok']} posts in {cur_a['seconds']:.1f} s")

    log(f"(b) {posts} posts, no added latency")
    with serve(posts, 0.0) as (url, server_pid):
        with tempfile.TemporaryDirectory(prefix="seq-bench-") as tmp:
            seq_b = sequential(url, posts, Path(tmp))
        log(f"    sequential: {seq_b['posts']} posts in {seq_b['seconds']:.1f} s")
        server_cpu = cpu_seconds(server_pid)
        cur_b = run_curate(url, posts, concurrency, memory=True)
        server_cpu = cpu_seconds(server_pid) - server_cpu
        log(f"    curate: {cur_b['ok']} posts in {cur_b['seconds']:.1f} s, {cur_b['cpu_s']:.1f} CPU s")
        if args.profile:
            profile_crawl(url, posts, concurrency, args.profile)

    speedup = cur_a["posts_per_s"] / seq_a["posts_per_s"]
    growth = cur_b["rss_mb_at_95pct"] - cur_b["rss_mb_at_25pct"]
    failed = int(cur_a["failed"] + cur_b["failed"])
    figures: dict[str, object] = {
        "bench": "crawl",
        "posts": posts,
        "concurrency": concurrency,
        "latency_s": args.latency,
        "baseline_posts": int(seq_a["posts"]),
        "sequential_posts_per_s": round(seq_a["posts_per_s"], 2),
        "curate_posts_per_s_latency": round(cur_a["posts_per_s"], 2),
        "speedup_vs_sequential": round(speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "sequential_posts_per_s_no_latency": round(seq_b["posts_per_s"], 2),
        "curate_posts_per_s_no_latency": round(cur_b["posts_per_s"], 2),
        "curate_mb_per_s_no_latency": round(cur_b["mb_per_s"], 2),
        "curate_cpu_s_no_latency": round(cur_b["cpu_s"], 2),
        "server_cpu_s_no_latency": round(server_cpu, 2),
        "target_posts_per_s": TARGET_POSTS_PER_S,
        "speedup_no_latency": round(cur_b["posts_per_s"] / seq_b["posts_per_s"], 2),
        "failed_rows": failed,
        "retries": int(cur_a["retries"] + cur_b["retries"]),
        "rss_mb_before": round(cur_b["rss_mb_before"], 1),
        "rss_mb_peak": round(cur_b["rss_mb_peak"], 1),
        "rss_mb_at_25pct": round(cur_b["rss_mb_at_25pct"], 1),
        "rss_mb_at_95pct": round(cur_b["rss_mb_at_95pct"], 1),
        "rss_mb_at_end": round(cur_b["rss_mb_at_end"], 1),
        "rss_growth_mb_25_to_95": round(growth, 1),
        "target_rss_growth_mb": TARGET_RSS_GROWTH_MB,
        "cpu_count": os.cpu_count(),
        "met_targets": bool(
            speedup >= TARGET_SPEEDUP
            and cur_b["posts_per_s"] >= TARGET_POSTS_PER_S
            and failed == 0
            and growth <= TARGET_RSS_GROWTH_MB
        ),
    }
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()
    sys.exit(0)
