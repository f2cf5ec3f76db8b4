"""Benchmark all-vs-all kNN (`embed.index.knn_all` against exact brute force) and embedding training.

100,000 × 128 clustered unit vectors (2,000 clusters of uneven size and spread, as face embeddings of
many characters are), k = 10. Target on 2 cores: ≤ 10 s at recall@10 ≥ 0.95 against the exact
neighbours, which a flat inner-product index finds in the same run. Also instance-discrimination
training images/s on the CPU (resnet18 at 128 px, batch 64, the default settings), over 256 crops.

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


def training_images_per_s(quick: bool) -> float:
    """Images/s of the second epoch of `train_embedding` (the first pays for start-up)."""
    import tempfile

    from PIL import Image

    from embed.train import EmbedTrainOptions, train_embedding

    count = 32 if quick else 256
    settings = {"backbone": "test_resnet", "size": 48} if quick else {"backbone": "resnet18", "size": 128}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index in range(count):
            path = Path(tmp) / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(path)
            paths.append(path)
        options = EmbedTrainOptions(**settings, epochs=1, device="cpu", progress=False)
        train_embedding(paths, Path(tmp) / "model", options)
        start = time.perf_counter()
        options.epochs = 2
        train_embedding(paths, Path(tmp) / "model", options)
        return count / (time.perf_counter() - start)


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

    training = training_images_per_s(args.quick)
    print(f"instance-discrimination training: {training:.1f} images/s", file=sys.stderr)

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
        "embed_training_images_per_s": round(training, 2),
        "embed_training_model": "test_resnet@48" if args.quick else "resnet18@128",
        "met_targets": bool(ours_s <= TARGET_SECONDS and reached >= TARGET_RECALL),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
