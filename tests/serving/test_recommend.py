"""GET /recommend and /similar: known answers, fallback, filters, and every bad input as 4xx JSON."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.idmap import IdMap
from serving.ids import RequestIds
from serving.schemas import RecommendResponse, SimilarResponse


def history(bundles, user: str) -> tuple[list[str], str]:
    """The items ``user`` has seen when serving (train + valid) and the held-out last one."""
    frame = bundles.dataset.interactions
    items = frame[frame["user_id"] == user].sort_values("timestamp")["item_id"].tolist()
    return items[:-1], items[-1]


def test_known_user_gets_the_held_out_item_first_and_no_seen_items(client, bundles):
    for user in ("u0", "u1", "u7"):
        response = client.get("/recommend", params={"user": user, "k": 10})
        assert response.status_code == 200
        body = RecommendResponse.model_validate(response.json())
        seen, held_out = history(bundles, user)
        ids = [item.item_id for item in body.items]
        assert body.fallback is None and body.user == user and body.model_version == bundles.v1
        assert ids[0] == held_out
        assert not set(ids) & set(seen)
        assert len(ids) == len(set(ids)) and 0 < len(ids) <= 10
        assert all(isinstance(item.score, float) for item in body.items)
        assert body.items[0].title == f"item {held_out[1:]}"


def test_unknown_user_gets_popular_items_marked_as_fallback(client):
    response = client.get("/recommend", params={"user": "someone-new", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["fallback"] == "popular" and body["user"] == "someone-new"
    assert len(body["items"]) == 5
    assert all(isinstance(item["item_id"], str) for item in body["items"])


def test_exclude_is_honoured_for_known_and_unknown_users(client):
    for user in ("u0", "someone-new"):
        first = [i["item_id"] for i in client.get("/recommend", params={"user": user, "k": 4}).json()["items"]]
        excluded = first[:2]
        again = client.get("/recommend", params={"user": user, "k": 4, "exclude": ",".join([*excluded, "nope", ""])})
        assert again.status_code == 200
        ids = [i["item_id"] for i in again.json()["items"]]
        assert not set(ids) & set(excluded)
        assert len(ids) == 4 if user == "someone-new" else len(ids) >= 1


def test_k_above_the_catalogue_size_returns_what_there_is(client, bundles):
    n_items = bundles.split.n_items
    for user in ("u0", "someone-new"):
        response = client.get("/recommend", params={"user": user, "k": 100})
        assert response.status_code == 200 and 0 < len(response.json()["items"]) <= n_items
    assert len(client.get("/similar", params={"item": "i0", "k": 100}).json()["items"]) == n_items - 1


def test_default_k_is_ten(client):
    assert len(client.get("/recommend", params={"user": "someone-new"}).json()["items"]) == 10


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("", "query.user: Field required"),
        ("user=", "query.user"),
        ("user=%20%20", "query.user: must contain a visible character"),
        ("user=a%00b", "query.user: must contain a visible character and no control characters"),
        ("user=u0&k=0", "query.k: Input should be greater than or equal to 1"),
        ("user=u0&k=101", "query.k: Input should be less than or equal to 100"),
        ("user=u0&k=-1", "query.k"),
        ("user=u0&k=abc", "query.k: Input should be a valid integer"),
        ("user=u0&k=1.5", "query.k"),
        ("user=" + "x" * 257, "query.user: String should have at most 256 characters"),
        ("user=u0&exclude=" + "i1," * 2000, "query.exclude: String should have at most 4096 characters"),
    ],
)
def test_bad_recommend_requests_are_422_json(client, query, mentions):
    response = client.get(f"/recommend?{query}")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert mentions in body["detail"]


def test_similar_items_exclude_the_item_itself(client):
    response = client.get("/similar", params={"item": "i0", "k": 4})
    assert response.status_code == 200
    body = SimilarResponse.model_validate(response.json())
    ids = [item.item_id for item in body.items]
    assert body.item == "i0" and "i0" not in ids and len(ids) == 4


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("item=nope", 404, "unknown_item"),
        ("", 422, "invalid_request"),
        ("item=", 422, "invalid_request"),
        ("item=i0&k=0", 422, "invalid_request"),
        ("item=i0&k=101", 422, "invalid_request"),
        ("item=" + "x" * 257, 422, "invalid_request"),
    ],
)
def test_bad_similar_requests(client, query, status, error):
    response = client.get(f"/similar?{query}")
    assert response.status_code == status
    assert response.json()["error"] == error


def test_unknown_item_detail_says_what_to_do(client):
    detail = client.get("/similar", params={"item": "nope"}).json()["detail"]
    assert "'nope'" in detail and "retrain" in detail


def test_integer_id_bundles_take_only_plain_integers():
    ids = RequestIds(IdMap(np.array([1, 2, 1000], dtype=np.int64)), IdMap(np.array([5, 6], dtype=np.int64)))
    assert ids.user("2") == 2 and ids.user("-3") == -3
    for impossible in ("1.5", "1e3", " 2 ", "inf", "nan", "0x10", "9" * 30, "٣", "abc"):
        assert ids.user(impossible) not in (1, 2, 1000), impossible  # an id that is certainly unknown
        assert ids.item(impossible) is None, impossible
    assert ids.items(["5", "1.5", "6", "inf"]) == [5, 6]
    strings = RequestIds(IdMap(np.array(["a", "b"], dtype=object)), IdMap(np.array(["1.5"], dtype=object)))
    assert strings.user("1.5") == "1.5" and strings.item("1.5") == "1.5"
