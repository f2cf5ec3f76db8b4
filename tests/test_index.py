"""FAISS indexes: the choice of index, recall measured against exact search, all-vs-all kNN, dedup groups."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from curate.errors import InvalidArgument
from embed.dedup import duplicate_groups, keepers
from embed.index import (
    ALL_VS_ALL_FLAT_MAX,
    as_unit_float32,
    build_index,
    choose_kind,
    ivf_lists,
    knn_all,
    recall,
    tune_recall,
)
from tests.bench.knn import clustered


def exact_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    similarities = vectors @ vectors.T
    return np.argsort(-similarities, axis=1, kind="stable")[:, :k]


def test_vectors_are_checked_and_normalised():
    unit = as_unit_float32(np.array([[3.0, 4.0], [0.0, 2.0]]))
    assert unit.dtype == np.float32 and np.allclose(unit, [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(InvalidArgument, match="non-zero"):
        as_unit_float32(np.zeros((2, 3)))
    with pytest.raises(InvalidArgument, match="N×D"):
        as_unit_float32(np.zeros(3))


def test_index_choice():
    assert choose_kind(1000) == "flat" and choose_kind(2_000_000) == "ivf"
    assert choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(InvalidArgument, match="index kind"):
        choose_kind(10, "lsh")
    assert ivf_lists(100_000) == 1264 and ivf_lists(1000) == 25 and ivf_lists(10) == 1


def test_flat_index_is_exact():
    vectors = clustered(2000, 32, 40)
    index, info = build_index(vectors)
    assert info.kind == "flat" and info.recall_at_k == 1.0 and index.ntotal == 2000
    similarities, found = index.search(vectors[:50], 5)
    assert np.array_equal(found, exact_neighbours(vectors, 5)[:50])
    assert np.allclose(similarities[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_reach_the_recall_asked_and_say_so(kind):
    vectors = clustered(8000, 32, 160, seed=1)
    truth = exact_neighbours(vectors, 10)
    index, info = build_index(vectors, kind)
    info = tune_recall(index, info, vectors, 10, target=0.97)
    _, found = index.search(vectors, 10)
    assert info.kind == kind and info.k == 10 and info.recall_at_k >= 0.97
    assert recall(found, truth) == pytest.approx(info.recall_at_k, abs=0.03)  # the sample is honest


def test_ivf_raises_nprobe_until_the_target():
    vectors = clustered(8000, 32, 160, seed=2)
    index, info = build_index(vectors, "ivf")
    easy = tune_recall(index, info, vectors, 10, target=0.5).nprobe
    hard = tune_recall(index, info, vectors, 10, target=0.999)
    assert hard.nprobe > easy and hard.recall_at_k >= 0.999
    assert recall(np.array([[1, 2, -1]]), np.array([[2, 1, 3]])) == pytest.approx(2 / 3)  # -1: not found


def test_knn_all_is_exact_when_small_and_finds_each_vector_itself():
    vectors = clustered(500, 16, 10)
    similarities, found, info = knn_all(vectors, 4)
    assert info.kind == "flat" and len(vectors) <= ALL_VS_ALL_FLAT_MAX
    assert np.array_equal(found[:, 0], np.arange(500)) and np.allclose(similarities[:, 0], 1, atol=1e-5)
    assert np.array_equal(found, exact_neighbours(vectors, 4))


def test_duplicate_groups_are_connected_components_above_the_threshold():
    # 0~1 (0.99), 1~2 (0.985): one chain; 3~4 at 0.9 stays apart at 0.98; 5 alone
    neighbours = np.array([[0, 1], [1, 2], [2, 1], [3, 4], [4, 3], [5, 0]])
    similarities = np.array([[1, 0.99], [1, 0.985], [1, 0.985], [1, 0.9], [1, 0.9], [1, 0.2]])
    groups = duplicate_groups(similarities, neighbours, 0.98)
    assert groups.tolist() == [0, 0, 0, 3, 4, 5]
    assert duplicate_groups(similarities, neighbours, 0.85).tolist() == [0, 0, 0, 3, 3, 5]


def test_the_largest_source_then_the_best_score_is_kept():
    groups = np.array([0, 0, 0, 3, 3, 5])
    kept = keepers(groups, sizes=[100, 300, 300, 50, 50, 10], scores=[9, 1, 2, 1, 1, 0], ids=list("abcdef"))
    assert kept == [2, 2, None, None, 3, None]  # c: largest (tied with b) and better score; d before e
