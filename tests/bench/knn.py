"""Benchmark all-vs-all kNN: `embed.index.knn_all` against exact brute force in the same run.

100,000 × 128 clustered unit vectors (2,000 clusters of uneven size and spread, as face embeddings of
many characters are), k = 10. Target on 2 cores: ≤ 10 s at recall@10 ≥ 0.95 against the exact
neighbours, which a flat inner-product index finds in the same run.

Run from the repo root: ``python tests/bench/knn.py [--quick]``. Prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from embed.index import as_unit_float32, knn_all, recall  # noqa: E402

TARGET_SECONDS, TARGET_RECALL = 10.0, 0.95


def clustered(count: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` centres, cluster sizes Zipf-like and spreads from tight to loose."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    weights = 1 / np.arange(1, clusters + 1) ** 0.5
    members = rng.choice(clusters, size=count, p=weights / weights.sum())
    spread = rng.uniform(0.05, 0.25, size=clusters).astype(np.float32)
    noise = rng.normal(size=(count, dim)).astype(np.float32) * spread[members, None] * np.sqrt(dim)
    return as_unit_float32(centres[members] + 0.35 * noise)


def main() -> None:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 vectors (a smoke run)")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    count = 20_000 if args.quick else args.count
    vectors = clustered(count, 128, max(10, count // 50))

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, exact = flat.search(vectors, args.k)
    exact_s = time.perf_counter() - start
    print(f"exact: {exact_s:.1f} s", file=sys.stderr)

    start = time.perf_counter()
    _, found, info = knn_all(vectors, args.k, kind="ivf")
    ours_s = time.perf_counter() - start
    reached = recall(found, exact)
    print(
        f"knn_all: {ours_s:.1f} s, recall {reached:.4f} ({info.kind}, nprobe {info.nprobe})", file=sys.stderr
    )

    figures = {
        "bench": "knn",
        "vectors": count,
        "dim": 128,
        "k": args.k,
        "cpus": len(os.sched_getaffinity(0)),
        "exact_seconds": round(exact_s, 2),
        "knn_all_seconds": round(ours_s, 2),
        "speedup_vs_exact": round(exact_s / ours_s, 2),
        "recall_at_k": round(reached, 4),
        "recall_estimated": round(info.recall_at_k or 0.0, 4),
        "index": info.as_dict(),
        "met_targets": bool(ours_s <= TARGET_SECONDS and reached >= TARGET_RECALL),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
