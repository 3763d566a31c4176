"""Baselines answer the shared contract; personalised ones beat popularity on learnable data."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluate.baselines import EASE, ItemKNN, Popularity, RandomScores
from recsys.evaluate.scoring import evaluate_model
from tests.fixtures.contract import RecommenderContract


class TestPopularity(RecommenderContract):
    personalised = False

    def make_model(self, split):
        return Popularity().fit(split)


class TestItemKNN(RecommenderContract):
    def make_model(self, split):
        return ItemKNN(neighbours=10).fit(split)


class TestEASE(RecommenderContract):
    def make_model(self, split):
        return EASE(l2=1.0).fit(split)


def test_popularity_counts_train_only(checkerboard_split):
    model = Popularity().fit(checkerboard_split)
    assert model.counts.sum() == len(checkerboard_split.train)


@pytest.mark.parametrize("model_cls", [EASE, ItemKNN])
def test_baselines_beat_random_and_pop_on_ml100k(ml100k_split, model_cls):
    random_metrics, _ = evaluate_model(RandomScores().fit(ml100k_split), ml100k_split)
    pop_metrics, _ = evaluate_model(Popularity().fit(ml100k_split), ml100k_split)
    model_metrics, _ = evaluate_model(model_cls().fit(ml100k_split), ml100k_split)
    assert pop_metrics["NDCG@10"] > 3 * random_metrics["NDCG@10"]
    assert model_metrics["NDCG@10"] > pop_metrics["NDCG@10"]


def test_pop_reproduces_the_protocol_reference(ml100k_split):
    metrics, _ = evaluate_model(Popularity().fit(ml100k_split), ml100k_split)
    # PROTOCOL.md: Pop (exact train counts) HR@10 0.086, NDCG@10 0.045, Recall@20 0.126.
    assert metrics["HR@10"] == pytest.approx(0.086, abs=0.001)
    assert metrics["NDCG@10"] == pytest.approx(0.045, abs=0.001)
    assert metrics["Recall@20"] == pytest.approx(0.126, abs=0.001)
    assert np.isclose(metrics["Recall@20"], metrics["HR@20"])
