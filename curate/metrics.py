"""Multi-label metrics shared by the stages that train or judge taggers and embeddings."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of each column (NaN where a column has no positive): precision averaged at each positive."""
    result = np.full(scores.shape[1], np.nan)
    for column in range(scores.shape[1]):
        positives = targets[:, column] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, column], kind="stable")
        hits = positives[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        result[column] = precision[hits].mean()
    return result


def micro_f1(scores: np.ndarray, targets: np.ndarray, threshold: float) -> float:
    """F1 over every (sample, label) pair, predicting a label at `threshold`."""
    predicted = scores >= threshold
    truth = targets > 0
    tp = float(np.sum(predicted & truth))
    denominator = float(np.sum(predicted) + np.sum(truth))
    return 2 * tp / denominator if denominator else 0.0


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The chance that a positive outscores a negative, ties counting half (Mann–Whitney)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    above, beside = scores[positive][:, None], scores[~positive][None, :]
    return float((above > beside).mean() + 0.5 * (above == beside).mean())
