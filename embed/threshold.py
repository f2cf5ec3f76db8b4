"""Where the filter cuts: the threshold that meets a target precision on the seeds' held-out scores."""

from __future__ import annotations

import math

import numpy as np

from curate.errors import InvalidArgument

MAJORITY = 0.5  # the cut when the seeds cannot vouch for the target precision at any score


def choose_threshold(
    loo: np.ndarray, label: np.ndarray, target: float, *, good_only: bool
) -> tuple[float, float | None, bool]:
    """(threshold, estimated precision, whether the target was met) from the seeds' leave-one-out scores.

    With bad seeds: the lowest cut at which the good share of seeds scoring at least it reaches
    `target`, placed halfway to the next lower seed score. Seeds with equal scores stand or fall
    together. When no cut reaches the target, the majority vote (0.5) is the cut and its estimated
    precision is reported: keeping nothing would help no one, and the caller warns.
    With good seeds only precision cannot be estimated; the cut keeps `target` of the good seeds.
    """
    seeds = (label >= 0) & np.isfinite(loo)
    if good_only:
        good = np.sort(loo[seeds & (label == 1)])
        if not len(good):
            raise InvalidArgument(
                "one good seed cannot choose a threshold: give more, bad seeds, or --threshold"
            )
        return float(good[math.floor((1 - target) * (len(good) - 1))]), None, True
    order = np.argsort(-loo[seeds], kind="stable")
    scores, labels = loo[seeds][order], label[seeds][order]
    # a cut sits at the end of each run of equal scores, so tied seeds stand or fall together;
    # sorted once, which matters when a tag query makes tens of thousands of seeds
    if not len(scores):
        return MAJORITY, None, False
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    cuts = scores[ends]  # distinct scores, highest first
    precision = np.cumsum(labels == 1)[ends] / (ends + 1)
    meeting = np.flatnonzero(precision >= target)
    if not len(meeting):
        majority = scores >= MAJORITY
        estimate = float((labels[majority] == 1).mean()) if majority.any() else None
        return MAJORITY, estimate, False
    cut = meeting[-1]
    # halfway to the next seed's score: the seeds' scores bunch at 0 and 1, and faces fall between
    below = float(cuts[cut + 1]) if cut + 1 < len(cuts) else float(cuts[cut])
    return (float(cuts[cut]) + below) / 2, float(precision[cut]), True
