"""Load on `curate serve`'s generate API: concurrent clients against a tiny model, and the same images
drawn by the generator directly in this process.

A tiny conditional run is trained (tests/gan.py's colour set and options, as the tests' colour run),
`python -m curate serve` starts on 127.0.0.1 on a free port in a subprocess, and `--requests` POST
/api/generate calls (each `--count` images, labels and seeds varying) come from `--clients` threads.
Every request must be answered 200. Then the server is stopped and the baseline runs: the same images
from TrainedGenerator.ws/images in batches of the server's `--batch` (no HTTP, no PNGs, no history).

Run from the repo root:
  python tests/bench/serve.py            200 requests from 20 clients, 4 images each
  python tests/bench/serve.py --quick    a smoke run (24 requests from 6 clients)
Prints one JSON line on stdout; progress goes to stderr. A hard time limit (`--time-limit`) stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

LABELS = ["label_0", "label_1", "label_2", "label_3"]


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def tiny_run(folder: Path, kimg: float) -> Path:
    """A run trained for `kimg` on the four-colour set with the tests' tiny network."""
    from tests.gan import colour_set, tiny_options
    from train.stage import train_stylegan

    data = colour_set(folder / "data")
    run = folder / "ws" / "runs" / "tiny"
    train_stylegan(tiny_options(data, run, kimg=kimg, tick_kimg=kimg, snap_ticks=1))
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workspace: Path, run: Path, port: int, device: str, batch: int, logfile) -> subprocess.Popen:
    command = [sys.executable, "-m", "curate", "serve", "--workspace", str(workspace), "--run", str(run)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", device, "--batch", str(batch)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=logfile, stderr=subprocess.STDOUT)


def wait_ready(url: str, server: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/api/runs", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not answer in time")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on ^C
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(15)


def body(i: int, count: int) -> dict:
    return {"labels": [LABELS[i % len(LABELS)]], "seed": i * count, "count": count, "truncation": 0.7}


def load(
    url: str, requests: int, clients: int, count: int, deadline: float
) -> tuple[list[float], int, float]:
    """Latencies of the answered requests, how many failed, and the wall time."""
    latencies: list[float] = []
    failed = 0
    lock = threading.Lock()
    turn = iter(range(requests))

    def client() -> None:
        nonlocal failed
        with httpx.Client(base_url=url, timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    i = next(turn, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    ok = http.post("/api/generate", json=body(i, count)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        failed += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)
    return latencies, failed, time.perf_counter() - start


def baseline(run: Path, requests: int, count: int, batch: int, device: str) -> float:
    """Images/s of TrainedGenerator alone for the same images, `batch` at a time."""
    from train.inference import load_generator, seed_z

    gen = load_generator(run, device=device)
    samples = [
        (i * count + k, gen.labels([LABELS[i % len(LABELS)]])) for i in range(requests) for k in range(count)
    ]

    def draw(chunk):
        ws = gen.ws(seed_z([s for s, _ in chunk], gen.z_dim), [row for _, row in chunk], truncation=0.7)
        return next(gen.images(ws, batch=len(chunk)))

    draw(samples[:batch])  # warm-up: each label set's mean w, the allocator
    start = time.perf_counter()
    for i in range(0, len(samples), batch):
        draw(samples[i : i + batch])
    return len(samples) / (time.perf_counter() - start)


def out_of_time(*_) -> None:
    raise TimeoutError("the benchmark ran past its time limit")  # the `finally` still stops the server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--count", type=int, default=4, help="images per request")
    parser.add_argument("--batch", type=int, default=16, help="the server's --batch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-limit", type=float, default=300, help="seconds for the whole benchmark")
    args = parser.parse_args()
    requests = args.requests or (24 if args.quick else 200)
    clients = args.clients or (6 if args.quick else 20)
    begun = time.monotonic()
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.time_limit) + 30)  # a backstop: the deadlines below should end it first
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "wb") as logfile:
        run = tiny_run(Path(tmp), 0.256)
        log(f"trained {run} in {time.monotonic() - begun:.1f} s")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(Path(tmp) / "ws", run, port, args.device, args.batch, logfile)
        try:
            wait_ready(url, server, time.monotonic() + 60)
            with httpx.Client(base_url=url, timeout=60) as http:  # warm-up: the model, the label sets' means
                assert http.get("/api/runs/tiny/info").status_code == 200
                for i in range(len(LABELS)):
                    assert http.post("/api/generate", json=body(10_000 + i, 1)).status_code == 200
            deadline = begun + args.time_limit - 30  # leaves time for the baseline
            latencies, failed, seconds = load(url, requests, clients, args.count, deadline)
        finally:
            stop_server(server)
            logfile.flush()
        entries = len(list((run / "playground").iterdir()))
        log(f"{len(latencies)} answered, {failed} failed in {seconds:.1f} s; server log:")
        log((Path(tmp) / "server.log").read_text(errors="replace")[-2000:])
        base = baseline(run, requests, args.count, args.batch, args.device)
    answered = len(latencies)
    rate = answered * args.count / seconds
    figures = {
        "bench": "serve",
        "device": args.device,
        "requests": requests,
        "clients": clients,
        "images_per_request": args.count,
        "batch": args.batch,
        "answered": answered,
        "failed": failed,
        "unanswered": requests - answered - failed,
        "history_entries": entries - len(LABELS),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1) if latencies else None,
        "p95_ms": round(float(np.percentile(latencies, 95)) * 1000, 1) if latencies else None,
        "requests_per_s": round(answered / seconds, 2),
        "images_per_s": round(rate, 2),
        "baseline_images_per_s": round(base, 2),
        "share_of_baseline": round(rate / base, 3),
        "seconds": round(time.monotonic() - begun, 1),
    }
    signal.alarm(0)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
