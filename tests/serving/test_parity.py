"""Served is measured: the HTTP answer to the evaluation's request is the evaluation's answer.

On the tiny trained + compressed bundles (teacher and compressed, both with a ranker): POST
/recommend with each test user's evaluation history and the held-out time returns evaluate's
top-k; a batch answers like its requests one by one; the server's cached state answers like a
recomputation.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.bundle.load import load_serving_model
from recsys.data.datasets import load_dataset
from recsys.evaluate.models import load_model
from recsys.evaluate.scoring import TOPK, held_out_requests, recommend_for_stage
from recsys.pipeline.ranker_features import request_context
from recsys.pipeline.recommend import request_rows
from recsys.split import temporal_split
from serving.app import create_app
from serving.settings import Settings

BUNDLES = ("teacher", "compressed")


@pytest.fixture(scope="module")
def split(tiny):
    return temporal_split(load_dataset(str(tiny.interactions), tiny.root, str(tiny.items)))


@pytest.mark.parametrize("name", BUNDLES)
def test_post_recommend_with_the_evaluation_request_returns_evaluates_top_k(tiny, split, name, tmp_path):
    bundle = tiny.bundles / "holdout" / name
    assert load_serving_model(bundle).pipeline.has_ranker
    expected = recommend_for_stage(load_model(str(bundle), split), split, "test", TOPK)
    settings = Settings(bundle=bundle, events_db=tmp_path / "events.sqlite")
    with TestClient(create_app(settings)) as client:
        for row, body in enumerate(held_out_requests(split, "test")):
            answer = client.post("/recommend", json={**body, "k": TOPK})
            assert answer.status_code == 200, answer.text
            got = [item["item_id"] for item in answer.json()["items"]]
            want = [str(item) for item in split.items.to_external(expected[row][expected[row] >= 0])]
            assert got == want, f"user {body['user']}"


@pytest.mark.parametrize("name", BUNDLES)
def test_a_batch_answers_like_its_requests_one_by_one(tiny, split, name):
    pipeline = load_serving_model(tiny.bundles / "holdout" / name, precompute_users=False).recommender().pipeline
    users, _ = split.targets("test")
    history, context = split.user_history("test"), request_context(split, "test")
    batch_ids, batch_scores, _ = pipeline.recommend(users, TOPK, history, context=context)
    for row in range(0, len(users), 7):
        one = {key: value[row:row + 1] for key, value in context.items()}
        ids, scores, _ = pipeline.recommend(users[row:row + 1], TOPK, history, context=one)
        np.testing.assert_array_equal(ids[0], batch_ids[row])
        np.testing.assert_allclose(scores[0], batch_scores[row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", BUNDLES)
def test_the_servers_cached_state_answers_like_a_recomputation(tiny, split, name):
    served = load_serving_model(tiny.bundles / name)  # tower outputs precomputed, user side cached
    plain = served.recommender().pipeline
    stored = served.content.history
    for user in range(0, split.n_users, 5):
        at = 1_000_000.0 + user
        cached = served.recommend(split.users.ids[user], TOPK, at=at)
        rows = request_rows(stored, np.array([user]), plain.n_items, plain.history_len)
        context = {"timestamp": np.array([at]), "last_timestamp": np.array([float(served.content.last_time[user])])}
        ids, _, _ = plain.recommend_rows(np.array([user]), rows, TOPK, context=context,
                                         n_candidates=served.n_candidates)
        recomputed = [str(item) for item in served.content.items.to_external(ids[0][ids[0] >= 0])]
        assert [str(item) for item in cached.items] == recomputed, f"user {split.users.ids[user]}"
