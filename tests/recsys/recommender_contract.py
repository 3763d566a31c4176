"""One test suite every model inherits (implicit's RecommenderBaseTestMixin, made temporal).

A subclass sets ``make_model(split)``; the checkerboard data makes the right answer exact.
"""

from __future__ import annotations

import numpy as np

from recsys.evaluate import evaluate_model


class RecommenderContract:
    personalised = True

    def make_model(self, split):
        raise NotImplementedError

    def test_shapes_and_order(self, checkerboard_split):
        model = self.make_model(checkerboard_split)
        users = np.arange(checkerboard_split.n_users)
        ids, scores = model.recommend(users, 5, checkerboard_split.user_history("test"))
        assert ids.shape == scores.shape == (len(users), 5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()

    def test_seen_items_are_excluded(self, checkerboard_split):
        model = self.make_model(checkerboard_split)
        history = checkerboard_split.user_history("test")
        users = np.arange(checkerboard_split.n_users)
        ids, _ = model.recommend(users, 10, history)
        for row, user in enumerate(users):
            assert not set(ids[row][ids[row] >= 0]) & set(history.seen[user].indices)

    def test_exclude_seen_false_keeps_seen(self, checkerboard_split):
        model = self.make_model(checkerboard_split)
        n = checkerboard_split.n_items
        ids, _ = model.recommend(np.array([0]), n, checkerboard_split.user_history("test"), exclude_seen=False)
        assert (ids >= 0).sum() == n

    def test_known_answer(self, checkerboard_split):
        if not self.personalised:
            return
        model = self.make_model(checkerboard_split)
        metrics, topk = evaluate_model(model, checkerboard_split, "test")
        # Each user has exactly one unseen item of their own group: it must come first.
        assert metrics["HR@10"] > 0 and metrics["MRR@10"] == 1.0
