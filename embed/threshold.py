"""Where the filter cuts: from the seeds' held-out scores, to meet a target precision.

Two rules. The vote's: the lowest cut at which the seeds scoring above it are good often enough
(`choose_threshold`). The learned scores': calibrate the held-out scores on the seeds (Platt 1999),
then cut where a face's calibrated chance of being bad, its local false discovery rate (Efron 2005),
reaches LOCAL_FACTOR × (1 − target) (`calibrated_threshold`). The second reads every seed's answer at
its own score instead of counting seeds above a cut, so it holds when the seeds are the faces nearest
the last cut, as the review page's are: on the fixture mix (tests/bench/review.py, 6 embeddings ×
queue and random answers) it met precision 0.95 at recall 0.90 after 60 answers in 10 of 12 runs
where the first rule met it in 5 (9 of 12 on another machine's embeddings), and kept more of the good
faces at every target from 0.85 to 0.98.
"""

from __future__ import annotations

import math

import numpy as np

from curate.errors import InvalidArgument

MAJORITY = 0.5  # the cut when the seeds cannot vouch for the target precision at any score
# the local error rate allowed at the cut, as a multiple of the kept set's (1 − target): the faces above
# a cut are surer than the one at it. 5 measured best of 3–6 on the fixture mix (0.75 at target 0.95)
LOCAL_FACTOR = 5.0
CALIBRATION_L2 = 1e-3  # the calibration's two weights are barely held back: they are fitted, not chosen


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


def calibrated_threshold(
    held_out: np.ndarray, label: np.ndarray, target: float
) -> tuple[float, float | None, bool, dict]:
    """(threshold, estimated precision, whether the rule applied, the calibration) from the seeds'
    held-out probabilities: the score at which a face's calibrated probability of being good is
    max(0.5, 1 − LOCAL_FACTOR × (1 − target)).

    The calibration is a logistic fit of the seeds' answers on their held-out log-odds (unweighted:
    the review page asks by score, so the seeds' answers at a score are a fair sample of the faces'
    there). Where the held-out scores do not rank the seeds at all, `choose_threshold` cuts instead.
    The estimated precision is the seeds' above the cut, each scored without itself, as before.
    """
    from embed.learned import LOGIT_SCALE, fit_logistic, logit, sigmoid

    seeds = (label >= 0) & np.isfinite(held_out)
    level = max(MAJORITY, 1 - LOCAL_FACTOR * (1 - target))
    if seeds.sum() >= 2 and len(set(label[seeds])) == 2:
        x = logit(held_out[seeds])[:, None] / LOGIT_SCALE
        good = (label[seeds] == 1).astype(np.float64)
        (slope,), bias = fit_logistic(x, good, CALIBRATION_L2, balanced=False)
        if slope > 1e-6:
            z = LOGIT_SCALE * (float(logit(np.array([level]))[0]) - bias) / float(slope)
            threshold = float(sigmoid(np.array(z)))
            above = seeds & (held_out >= threshold)
            estimate = float((label[above] == 1).mean()) if above.any() else None
            calibration = {"rule": "calibrated", "level": level, "slope": float(slope), "bias": bias}
            return threshold, estimate, True, calibration
    threshold, estimate, met = choose_threshold(held_out, label, target, good_only=False)
    return threshold, estimate, met, {"rule": "held-out precision", "level": None}
