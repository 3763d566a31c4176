"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluate.metrics import topk_metrics
from recsys.pipeline.topk import topk_from_scores


def test_hand_computed_case():
    topk = np.array([[3, 1, 2] + [-1] * 17,   # target at rank 2
                     [5, 6, 7] + [-1] * 17,   # miss
                     [9] + [-1] * 19])        # target at rank 1
    targets = np.array([1, 0, 9])
    m = topk_metrics(topk, targets, n_items=10)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 / np.log2(3) + 1.0) / 3)
    assert m["MRR@10"] == pytest.approx((0.5 + 1.0) / 3)
    assert m["Recall@20"] == m["HR@20"] == pytest.approx(2 / 3)
    assert m["coverage@10"] == pytest.approx(7 / 10)
    assert m["users"] == 3
    assert m["HR@10_se"] == pytest.approx(np.std([1, 0, 1], ddof=1) / np.sqrt(3))


def test_rank_beyond_k_does_not_count():
    topk = np.tile(np.arange(20), (1, 1))
    m = topk_metrics(topk, np.array([15]), n_items=20)
    assert m["HR@10"] == 0 and m["HR@20"] == 1 and m["NDCG@20"] == pytest.approx(1 / np.log2(17))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="columns"):
        topk_metrics(np.zeros((2, 5), dtype=int), np.zeros(2, dtype=int), 10)
    with pytest.raises(ValueError, match="aligned"):
        topk_metrics(np.zeros((2, 20), dtype=int), np.zeros(3, dtype=int), 10)


def test_topk_breaks_ties_at_the_cut_by_lower_index():
    rng = np.random.default_rng(0)
    scores = np.zeros((3, 5000), dtype=np.float32)  # long runs of ties: SIMD partition kernels reorder them
    scores[0, [4000, 17]] = 2.0
    scores[1] = rng.integers(0, 3, 5000)
    scores[2, :] = -np.inf
    scores[2, [10, 4999]] = [1.0, 1.0]
    ids, top = topk_from_scores(scores, 10)
    assert ids[0].tolist() == [17, 4000, 0, 1, 2, 3, 4, 5, 6, 7]
    assert ids[1].tolist() == np.flatnonzero(scores[1] == 2)[:10].tolist()
    assert ids[2].tolist() == [10, 4999] + [-1] * 8 and np.isneginf(top[2, 2:]).all()


def test_wide_rows_without_ties_at_the_cut_match_a_full_stable_sort():
    scores = np.random.default_rng(1).standard_normal((4, 3000)).astype(np.float32)
    scores[2, :2000] = -np.inf  # a row with fewer finite scores than columns, still more than k
    ids, top = topk_from_scores(scores, 25)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :25]
    assert ids.tolist() == expected.tolist()
    assert np.array_equal(top, np.take_along_axis(scores, expected, axis=1))
