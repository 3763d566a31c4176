"""GET /search over a bundle with a search index (the checkerboard, titles "item 3"): titles find
their item, k / exclude / user are honoured, the user's taste orders the matches, every odd text
answers 200, every bad input is a 4xx JSON, and a bundle without search answers 404."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recsys.bundle.load import read_id_maps, read_titles
from recsys.search.text import MAX_QUERY_CHARS
from serving.app import create_app
from serving.model_calls import RecommendCall, SearchCall, run_calls
from serving.routes import MODEL_ROUTES
from serving.schemas import SearchResponse
from serving.settings import Settings
from tests.fixtures.servers import ADMIN_TOKEN
from tests.serving.test_batched_answers import assert_same_answers_in_batches

# Both groups' items match each of these lexically (nearly) alike, so the user's taste decides the order.
AMBIGUOUS = ("item", "items", "item a", "item b", "a", "b")


@pytest.fixture
def search_client(search_bundle, tmp_path) -> Iterator[TestClient]:
    settings = Settings(bundle=search_bundle.root, events_db=tmp_path / "events.sqlite", admin_token=ADMIN_TOKEN,
                        queue_deadline_s=60.0, max_queue=10_000)
    with TestClient(create_app(settings)) as client:
        yield client


def search(client: TestClient, **params) -> SearchResponse:
    response = client.get("/search", params=params)
    assert response.status_code == 200, response.text
    return SearchResponse.model_validate(response.json())


def ids(body: SearchResponse) -> list[str]:
    return [item.item_id for item in body.items]


def test_an_items_exact_title_finds_it(search_client, search_bundle):
    titles = read_titles(search_bundle.root)
    _, items = read_id_maps(search_bundle.root)
    assert titles is not None and len(titles) > 3
    for row in titles.index[[0, 3, len(titles) - 1]]:
        title, item = titles[row], str(items.to_external(np.array([row]))[0])
        body = search(search_client, q=title, k=5)
        assert item in ids(body), (title, ids(body))
        assert body.query == title and body.user is None and body.personalised is False
        assert body.model_version == search_bundle.version
        assert next(entry for entry in body.items if entry.item_id == item).title == title
        scores = [entry.score for entry in body.items]
        assert scores == sorted(scores, reverse=True) and len(set(ids(body))) == len(body.items)


def test_k_is_respected_and_defaults_to_ten(search_client, search_bundle):
    n_items = len(search_bundle.dataset.items)
    for k in (1, 3, 7, 100):
        assert len(search(search_client, q="item", k=k).items) == min(k, n_items)
    assert len(search(search_client, q="item").items) == 10


def test_excluded_items_are_never_returned(search_client):
    for user in (None, "u0", "someone-new"):
        with_user = {} if user is None else {"user": user}
        first = ids(search(search_client, q="item", k=5, **with_user))
        excluded = first[:2]
        again = ids(search(search_client, q="item", k=5, exclude=",".join([*excluded, "nope", ""]), **with_user))
        assert len(again) == 5 and not set(again) & set(excluded)


def test_two_known_users_see_their_own_order(search_client):
    """u0 and u1 like disjoint item sets (the checkerboard's two groups)."""
    differs = []
    for query in AMBIGUOUS:
        first, second = search(search_client, q=query, user="u0"), search(search_client, q=query, user="u1")
        assert first.personalised and second.personalised and first.user == "u0"
        assert not search(search_client, q=query).personalised
        differs.append(ids(first) != ids(second))
    assert any(differs), "no query was ordered differently for two users with opposite tastes"
    # "item" matches every title: each user's first matches are their own group's items.
    assert all(int(item[1:]) < 10 for item in ids(search(search_client, q="item", user="u0", k=5)))
    assert all(int(item[1:]) >= 10 for item in ids(search(search_client, q="item", user="u1", k=5)))


def test_an_unknown_user_gets_the_anonymous_answer_unpersonalised(search_client):
    body = search(search_client, q="item 4", user="someone-new", k=5)
    assert body.user == "someone-new" and body.personalised is False
    anonymous = search(search_client, q="item 4", k=5)
    assert ids(body) == ids(anonymous) and ids(body)[0] == "i4"


def test_a_new_users_real_time_events_personalise_their_search(search_client):
    assert not search(search_client, q="item", user="newcomer").personalised
    clicked = [{"user": "newcomer", "item": item} for item in ("i11", "i12", "i13")]
    assert search_client.post("/events", json=clicked).status_code == 202
    body = search(search_client, q="item", user="newcomer", k=5)
    assert body.personalised and ids(body) != ids(search(search_client, q="item", k=5))  # flagged and re-ranked


@pytest.mark.parametrize("query", ["zzqxvw", "🙂🚀", "item 🙂", "東京タワー", "ñandú", "12345", "3", "!!!", "a" * 256,
                                   "  item  3  ", "DROP TABLE items;", "%", "\u00a0x"])
def test_any_visible_text_answers_200(search_client, query):
    body = search(search_client, q=query, k=5)
    assert body.query == query and len(body.items) <= 5


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("", "query.q: Field required"),
        ("q=", "query.q: String should have at least 1 character"),
        ("q=%20%20%20", "query.q: must contain a visible character"),
        ("q=%09%0A", "query.q: must contain a visible character"),
        ("q=a%00b", "query.q: must contain a visible character and no control characters"),
        ("q=" + "x" * (MAX_QUERY_CHARS + 1), f"query.q: String should have at most {MAX_QUERY_CHARS} characters"),
        ("q=item&k=0", "query.k: Input should be greater than or equal to 1"),
        ("q=item&k=101", "query.k: Input should be less than or equal to 100"),
        ("q=item&user=%20", "query.user: must contain a visible character"),
        ("q=item&user=" + "x" * 257, "query.user: String should have at most 256 characters"),
        ("q=item&exclude=" + "i1," * 2000, "query.exclude: String should have at most 4096 characters"),
        ("q=item&limit=3", "query.limit: unknown parameter"),
    ],
)
def test_bad_search_requests_are_422_json(search_client, query, mentions):
    response = search_client.get(f"/search?{query}")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert mentions in body["detail"]


def test_a_bundle_without_search_answers_404_json(client):
    response = client.get("/search", params={"q": "item 3"})
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "no_search_index" and "has no search index" in body["detail"]
    assert client.get("/search").status_code == 422  # the request is checked first


def test_search_is_batched_shed_and_measured(search_client):
    assert "/search" in MODEL_ROUTES
    search(search_client, q="item", user="u0")
    metrics = search_client.get("/metrics").text
    assert 'recsys_batch_size_count{endpoint="/search"} 1.0' in metrics
    assert 'recsys_stage_duration_seconds_count{endpoint="/search",stage=' in metrics  # the engine names its stages
    assert 'recsys_http_requests_total{endpoint="/search",status="200"} 1.0' in metrics


def test_concurrent_searches_get_the_answers_they_get_alone(search_client, search_bundle):
    users = [None, "u0", "u1", "u7", "someone-new"]
    asks = []
    for n, query in enumerate([*AMBIGUOUS, "item 3", "item 13", "🙂", "zzz"] * 3):
        params = {"q": query, "k": 1 + n % 12} | ({"user": users[n % 5]} if users[n % 5] else {})
        if n % 4 == 0:
            params["exclude"] = f"i{n % 20},i{(n + 7) % 20}"
        asks += [("/search", params), ("/recommend", {"user": f"u{n % 40}", "k": 5, "at": "10000000"})]

    def get(path, params):
        response = search_client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.content

    assert_same_answers_in_batches(get, lambda: search_client.get("/metrics").text, asks)


def test_a_mixed_batch_answers_each_call_as_alone(search_client):
    """`run_calls` groups by endpoint: /search and /recommend calls of one batch keep their order."""
    services = search_client.app.state.services
    live = services.state.current()
    calls = [SearchCall(live, "item", "u0", live.model.search_ask("item", "u0", 4)),
             RecommendCall(live, "u1", live.model.ask("u1", 3)),
             SearchCall(live, "item 5", None, live.model.search_ask("item 5", None, 2))]
    together = run_calls(calls, services.metrics)
    assert together == [run_calls([call], services.metrics)[0] for call in calls]
    assert b'"personalised":true' in together[0] and b'"fallback"' in together[1]
