"""The learned scores' cut (embed/threshold.py): calibrated on the seeds, placed by the local error rate."""

from __future__ import annotations

import numpy as np
import pytest

from embed.threshold import LOCAL_FACTOR, calibrated_threshold, choose_threshold


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_the_cut_is_where_the_true_chance_of_a_good_face_is_the_level():
    # answers drawn from a known calibration: P(good | s) = σ(1.5 logit s)
    rng = np.random.default_rng(0)
    held = _sigmoid(rng.normal(0, 2.5, 600))
    label = (rng.random(600) < _sigmoid(1.5 * np.log(held / (1 - held)))).astype(int)
    threshold, estimate, met, cut = calibrated_threshold(held, label, 0.95)
    level = 1 - LOCAL_FACTOR * 0.05
    assert cut["rule"] == "calibrated" and cut["level"] == pytest.approx(level) and met
    truth = _sigmoid(np.log(level / (1 - level)) / 1.5)  # where σ(1.5 logit s) = level
    assert threshold == pytest.approx(truth, abs=0.04)
    assert estimate == pytest.approx(label[held >= threshold].mean())


def test_a_low_target_cuts_at_even_odds_and_unanswered_rows_are_ignored():
    rng = np.random.default_rng(1)
    held = _sigmoid(rng.normal(0, 2, 400))
    label = (rng.random(400) < held).astype(int)  # calibrated already: even odds at 0.5
    label[::3] = -1
    held[1::7] = np.nan  # a seed with no held-out score reads as unanswered
    threshold, _, _, cut = calibrated_threshold(held, label, 0.8)
    assert cut["level"] == 0.5 and threshold == pytest.approx(0.5, abs=0.06)


@pytest.mark.parametrize("held", [np.linspace(0.1, 0.9, 8), np.full(8, 0.5)])
def test_scores_that_do_not_rank_the_seeds_fall_back_to_the_seeds_precision(held):
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # the good seeds score lowest, or all alike
    threshold, estimate, met, cut = calibrated_threshold(held, label, 0.9)
    assert cut == {"rule": "held-out precision", "level": None}
    assert (threshold, estimate, met) == choose_threshold(held, label, 0.9, good_only=False)


RULES = ("seeds", "calibrated")


def _review_loop(rng: np.random.Generator, rule: str) -> tuple[float, float]:
    """The review page's loop on a synthetic population: 10 good and 10 bad seeds, then two rounds of
    the 20 open faces nearest the cut. (precision, recall) of the kept set at the end."""
    z = rng.normal(0.5, 2.5, 400)
    good = rng.random(400) < _sigmoid(1.5 * z)
    score = _sigmoid(z)
    held = _sigmoid(z + rng.normal(0, 0.7, 400))  # a seed's fit without it is noisier
    label = np.full(400, -1)
    label[rng.choice(np.flatnonzero(good), 10, replace=False)] = 1
    label[rng.choice(np.flatnonzero(~good), 10, replace=False)] = 0
    for round_ in range(3):
        if rule == "calibrated":
            threshold = calibrated_threshold(held, label, 0.95)[0]
        else:
            threshold = choose_threshold(held, label, 0.95, good_only=False)[0]
        if round_ < 2:
            unanswered = np.flatnonzero(label < 0)
            nearest = unanswered[np.argsort(np.abs(score[unanswered] - threshold))[:20]]
            label[nearest] = good[nearest]
    kept = (label == 1) | ((label < 0) & (score >= threshold))
    return (kept & good).sum() / kept.sum(), (kept & good).sum() / good.sum()


def test_with_seeds_asked_near_the_cut_it_keeps_more_good_faces_at_the_target():
    # measured over 40 populations: precision 0.967 on average (0.924 at worst) at recall 0.79 (0.70),
    # against the seeds' precision rule's 0.982 at 0.68 (0.37): seeds asked near the cut are the
    # hardest faces, so the good share of those above a cut understates the kept set's and cuts high
    runs = {rule: [_review_loop(np.random.default_rng(n), rule) for n in range(40)] for rule in RULES}
    precision, recall = np.array(runs["calibrated"]).T
    _, seeds_recall = np.array(runs["seeds"]).T
    assert precision.mean() >= 0.955 and precision.min() >= 0.91
    assert recall.mean() >= seeds_recall.mean() + 0.08 and recall.min() >= seeds_recall.min() + 0.2


if __name__ == "__main__":
    for rule in RULES:
        p, r = np.array([_review_loop(np.random.default_rng(n), rule) for n in range(40)]).T
        print(rule, f"precision {p.mean():.3f} (≥0.95 in {(p >= 0.95).sum()}) recall {r.mean():.3f}")
