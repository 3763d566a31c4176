"""The retrieve -> rank -> filter pipeline on the checkerboard: contract, fallback, exclusions, ids."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.data.tokens import build_token_table
from recsys.evaluate.scoring import evaluate_model
from recsys.pipeline.feature_tables import build_feature_tables
from recsys.pipeline.ranker_features import request_context
from recsys.pipeline.recommend import STAGES, PipelineRecommender
from recsys.train.ranker import RankerTrainConfig, train_ranker
from recsys.train.torch_pipeline import towers_pipeline
from tests.fixtures.contract import RecommenderContract
from tests.fixtures.data import checkerboard_dataset
from tests.fixtures.models import train_tiny

TINY_RANKER = RankerTrainConfig(loss="softmax", epochs=3, batch_size=16, lr=0.01, patience=3,
                                positives_per_user=4, hard_negatives=5, random_negatives=2, examples="retriever")
TINY_SHAPE = {"width": 16, "depth": 1, "n_cross": 1, "vec_proj": 4}


@pytest.fixture(scope="module")
def trained():
    """Towers, tables and a ranker trained on the checkerboard (shared: training is the slow part)."""
    dataset = checkerboard_dataset()
    from recsys.split import temporal_split

    split = temporal_split(dataset)
    towers = train_tiny(split, dataset).model
    tables = build_feature_tables(split, build_token_table(dataset.items, "item_id", split.items))
    ranker = train_ranker(split, towers, tables, TINY_RANKER, TINY_SHAPE).model
    return split, towers, tables, ranker


def make_pipeline(trained, with_ranker=True):
    split, towers, tables, ranker = trained
    return towers_pipeline(towers, tables, ranker if with_ranker else None, users=split.users, items=split.items,
                           history=split.user_history("test"))


class TestRetrievalPipelineContract(RecommenderContract):
    @pytest.fixture(autouse=True)
    def _trained(self, trained):
        self.trained = trained

    def make_model(self, split):
        return PipelineRecommender(make_pipeline(self.trained, with_ranker=False))


class TestFullPipelineContract(TestRetrievalPipelineContract):
    def make_model(self, split):
        return PipelineRecommender(make_pipeline(self.trained))


def test_unknown_and_historyless_users_get_marked_popular_items(trained):
    split = trained[0]
    pipeline = make_pipeline(trained)
    history = split.user_history("test")
    exclude = sp.csr_matrix(([1.0], ([0], [pipeline._popular_order[0]])), shape=(2, split.n_items))
    ids, scores, fallback = pipeline.recommend(np.array([-1, 0]), 3, history, exclude=exclude)
    assert fallback.tolist() == [True, False]
    # The unknown user gets the most popular items except the excluded top one.
    assert ids[0].tolist() == pipeline._popular_order[1:4].tolist()
    assert (np.diff(scores[0]) <= 0).all()


def test_exclude_and_seen_are_honoured_for_known_users(trained):
    split = trained[0]
    pipeline = make_pipeline(trained)
    history = split.user_history("test")
    users = np.arange(split.n_users)
    first, _, _ = pipeline.recommend(users, 5, history)
    exclude = sp.csr_matrix((np.ones(len(users)), (np.arange(len(users)), first[:, 0])), shape=(len(users),
                                                                                                 split.n_items))
    again, _, fallback = pipeline.recommend(users, 5, history, exclude=exclude)
    assert not fallback.any()
    assert not (again == first[:, :1]).any()
    for row, user in enumerate(users):
        assert not set(again[row]) & set(history.seen[user].indices)


def test_external_ids_in_and_out(trained):
    split = trained[0]
    pipeline = make_pipeline(trained)
    group_b = [f"i{i}" for i in range(10, 14)]
    ids, scores, fallback = pipeline.recommend_external(["u0", "stranger", "newcomer"], 3,
                                                        exclude_items=[[], ["i0"], []],
                                                        new_items=[[], [], group_b])
    assert fallback.tolist() == [False, True, False]
    assert ids.dtype == object and all(isinstance(x, str) for x in ids.ravel())
    u0_seen = set(split.items.to_external(split.user_history("test").seen[0].indices))
    assert not set(ids[0]) & u0_seen
    assert "i0" not in ids[1]
    # The newcomer folded in group-b items: recommendations stay in group b and skip what it saw.
    assert all(int(x[1:]) >= 10 for x in ids[2]) and not set(ids[2]) & set(group_b)


def test_evaluation_scores_exactly_what_recommend_returns(trained):
    split = trained[0]
    pipeline = make_pipeline(trained)
    _, topk = evaluate_model(PipelineRecommender(pipeline), split, "test")
    users, _ = split.targets("test")
    ids, _, _ = pipeline.recommend(users, topk.shape[1], split.user_history("test"),
                                   context=request_context(split, "test"))
    assert np.array_equal(ids, topk)


def test_stage_timings_are_recorded(trained):
    split = trained[0]
    pipeline = make_pipeline(trained)
    timings: dict = {}
    pipeline.recommend(np.array([0]), 5, split.user_history("test"), timings=timings)
    assert set(timings) == set(STAGES) and all(value >= 0 for value in timings.values())


def test_pipeline_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, recsys.pipeline; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
