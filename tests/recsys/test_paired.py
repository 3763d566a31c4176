"""The paired evidence the gate decides on: per-user scores, bootstrap intervals, the refusal rule."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluate.paired import PairedDecision, Resampler, UserScores, event_scores


def test_event_scores_are_the_protocols_per_event_metrics():
    topk = np.array([[5, 7, 9], [1, 2, 3], [4, 4, 4]])
    scores = event_scores(topk, np.array([7, 8, 4]), k=3)
    assert scores["HR@3"].tolist() == [1.0, 0.0, 1.0]
    assert scores["NDCG@3"] == pytest.approx([1 / np.log2(3), 0.0, 1.0])


def test_user_scores_sum_events_per_user_in_user_order():
    scores = UserScores.of(np.array([1.0, 0.0, 0.5, 1.0]), np.array([7, 3, 7, 3]))
    assert scores.sums.tolist() == [1.0, 1.5] and scores.counts.tolist() == [2.0, 2.0]
    assert scores.mean == pytest.approx(2.5 / 4)


def test_the_interval_covers_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(0)
    widths = []
    for n in (200, 2000):
        values = (rng.random(n) < 0.3).astype(float)
        scores = UserScores(values, np.ones(n))
        low, high = Resampler.over(n, seed=1).interval(scores)
        assert low < scores.mean < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~ 1 / sqrt(10)


def test_identical_models_have_a_ratio_of_exactly_one():
    values = np.random.default_rng(0).random(300)
    scores = UserScores(values, np.ones(300))
    decision = PairedDecision.of(scores, scores, 0.97, Resampler.over(300))
    assert decision.ratio == 1.0 and decision.interval == (1.0, 1.0) and not decision.shown_worse


def _model(rng, base, share_redrawn):
    """``base``'s per-user hits with a share of users re-drawn at ``base``'s own rate (equal in
    expectation) or, with ``worse``, at a lower one."""
    values = base.copy()
    redraw = rng.random(len(base)) < share_redrawn
    values[redraw] = rng.random(redraw.sum()) < base.mean()
    return values


@pytest.mark.parametrize("seed", range(5))
def test_equal_models_pass_and_a_model_a_third_worse_is_refused(seed):
    # ml-100k-sized: 943 users, 5 events each, a hit rate near the card's HR@10.
    rng = np.random.default_rng(seed)
    n_users, events = 943, 5
    teacher = (rng.random((n_users, events)) < 0.25).astype(float)
    equal = np.stack([_model(rng, teacher[:, j], 0.5) for j in range(events)], axis=1)
    worse = teacher * (rng.random(teacher.shape) < 0.67)
    resampler = Resampler.over(n_users, seed=seed)
    counts = np.full(n_users, float(events))

    def scores(values):
        return UserScores(values.sum(axis=1), counts)

    assert not PairedDecision.of(scores(equal), scores(teacher), 0.97, resampler).shown_worse
    refused = PairedDecision.of(scores(worse), scores(teacher), 0.97, resampler)
    assert refused.shown_worse and refused.interval[1] < 0.97 and 0.55 < refused.ratio < 0.8
