"""FAISS indexes over L2-normalised embeddings: exact search while it is cheap, IVF beyond, recall measured.

Inner product on unit vectors is cosine similarity. Which index is "cheap" depends on the work: a few
seed queries against a million vectors is fine exactly, all-vs-all over a hundred thousand is not. So
the stored index is exact up to `FLAT_MAX` vectors, and all-vs-all kNN is exact up to `ALL_VS_ALL_FLAT_MAX`;
past those an IVF index is used, with `nprobe` raised until a sample of queries reaches the asked
recall against exact search, and the recall reached is returned so it can be recorded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from curate.errors import InvalidArgument

KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_MAX = 1_000_000  # stored index: exact inner product up to here
ALL_VS_ALL_FLAT_MAX = 20_000  # all-vs-all kNN: n² products stay a few seconds up to here
RECALL_SAMPLE = 1000  # queries compared against exact search to measure recall


@dataclass
class IndexInfo:
    """What was built and how good it is: recorded beside the index and in manifests' metadata."""

    kind: str  # flat | ivf | hnsw
    vectors: int
    dim: int
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    recall_at_k: float | None = None  # against exact search, on a sample of queries (1.0 for flat)
    k: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_unit_float32(vectors: np.ndarray) -> np.ndarray:
    """C-contiguous float32 rows of length 1 (FAISS wants exactly that for cosine by inner product)."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise InvalidArgument(f"expected a non-empty N×D array of vectors, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidArgument("vectors must be finite and non-zero")
    return np.ascontiguousarray(array / norms)


def choose_kind(count: int, kind: str = "auto", *, flat_max: int = FLAT_MAX) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if count <= flat_max else "ivf"


def ivf_lists(count: int) -> int:
    """About 4·√n lists (FAISS's guidance), at least 1 and never more than n / 39 (k-means needs points)."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def build_index(
    vectors: np.ndarray, kind: str = "auto", *, seed: int = 0, hnsw_m: int = 32
) -> tuple[Any, IndexInfo]:
    """An index holding `vectors` (unit rows), and its description (recall not yet measured)."""
    import faiss

    vectors = as_unit_float32(vectors)
    count, dim = vectors.shape
    kind = choose_kind(count, kind)
    info = IndexInfo(kind=kind, vectors=count, dim=dim)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        info.recall_at_k = 1.0
    elif kind == "ivf":
        nlist = ivf_lists(count)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 10  # k-means converges enough for routing; the lists only decide where to look
        sample = vectors
        if count > 64 * nlist:  # training on more points sharpens nothing but costs time
            rows = np.random.default_rng(seed).choice(count, 64 * nlist, replace=False)
            sample = vectors[np.sort(rows)]
        index.train(sample)
        index.nprobe = 1
        info.nlist, info.nprobe = nlist, 1
    else:
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
        info.hnsw_m, info.ef_search = hnsw_m, 64
    index.add(vectors)
    return index, info


def tune_recall(
    index: Any, info: IndexInfo, vectors: np.ndarray, k: int, target: float = 0.95, *, seed: int = 0
) -> IndexInfo:
    """Raise nprobe (IVF) or efSearch (HNSW) until a sample of queries reaches `target` recall@k."""
    import faiss

    vectors = as_unit_float32(vectors)
    k = min(k, len(vectors))
    info.k = k
    if info.kind == "flat":
        info.recall_at_k = 1.0
        return info
    rows = np.random.default_rng(seed).choice(len(vectors), min(RECALL_SAMPLE, len(vectors)), replace=False)
    queries = vectors[np.sort(rows)]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    while True:
        _, found = index.search(queries, k)
        per_query = _recalls(found, truth)
        info.recall_at_k = float(per_query.mean())
        # the sample's mean less two standard errors: the whole set then meets the target with ~98% odds
        if info.recall_at_k - 2 * per_query.std() / np.sqrt(len(per_query)) >= target:
            return info
        if info.kind == "ivf":
            if index.nprobe >= info.nlist:
                return info
            index.nprobe = min(info.nlist, index.nprobe * 2)
            info.nprobe = index.nprobe
        else:
            if index.hnsw.efSearch >= 4096:
                return info
            index.hnsw.efSearch *= 2
            info.ef_search = index.hnsw.efSearch


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true k nearest neighbours that were found (row by row, order ignored)."""
    hits, wanted = _hits(found, truth)
    return float(hits.sum() / max(1, wanted.sum()))


def _recalls(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each query's share of its true neighbours found."""
    hits, wanted = _hits(found, truth)
    return hits / np.maximum(1, wanted)


def _hits(found: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: true neighbours found, and true neighbours there are (−1 marks none)."""
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth, strict=True)]
    return np.array(hits), np.sum(truth >= 0, axis=1)


def knn_all(
    vectors: np.ndarray, k: int, *, target_recall: float = 0.95, kind: str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, IndexInfo]:
    """The k nearest neighbours of every vector among all of them (itself included, usually first).

    Returns (similarities N×k, indices N×k, what was used with its measured recall).
    """
    vectors = as_unit_float32(vectors)
    if kind == "auto":
        kind = "flat" if len(vectors) <= ALL_VS_ALL_FLAT_MAX else "ivf"
    index, info = build_index(vectors, kind, seed=seed)
    info = tune_recall(index, info, vectors, k, target_recall, seed=seed)
    similarities, neighbours = index.search(vectors, info.k)
    return similarities, neighbours, info
