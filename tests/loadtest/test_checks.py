"""Body checks and id sampling on known inputs."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from loadtest.checks import events_problem, recommend_problem, search_problem, similar_problem, unknown_item_problem
from loadtest.traffic import LoadConfig, LoadTestConfigError, Population
from recsys.data.idmap import IdMap


def body(user="7", items=("a", "b"), fallback=None, version="v1"):
    scored = [{"item_id": item, "score": 1.0 - i / 10, "title": None} for i, item in enumerate(items)]
    return {"user": user, "items": scored, "model_version": version, "fallback": fallback}


def test_good_recommend_body_passes():
    assert recommend_problem(body(), user="7", k=2, known=True, n_items=10, seen={"c"}) is None
    unknown = body(user="x", fallback="popular")
    assert recommend_problem(unknown, user="x", k=2, known=False, n_items=10, seen=set()) is None


@pytest.mark.parametrize(("bad", "kwargs", "expected"), [
    ([], {}, "not a JSON object"),
    (body(version=""), {}, "model_version"),
    (body(fallback="popular"), {}, "known user with history marked fallback"),
    (body(), {"known": False}, "unknown user not marked fallback"),
    (body(items=("a",)), {}, "expected 2 items, got 1"),
    (body(items=("a", "a")), {}, "duplicate"),
    (body(items=("a", "c")), {}, "already seen"),
    (body(items=("a", "d")), {"excluded": ("d",)}, "excluded"),
    (body(user="8"), {}, "another user"),
    ({"user": "7", "items": []}, {}, "lacks"),
])
def test_bad_recommend_bodies_are_named(bad, kwargs, expected):
    args = {"user": "7", "k": 2, "known": True, "n_items": 10, "seen": {"c"}} | kwargs
    assert expected in recommend_problem(bad, **args)


def test_k_is_capped_by_what_is_left_to_recommend():
    assert recommend_problem(body(items=("a",)), user="7", k=5, known=True, n_items=3, seen={"b", "c"}) is None


def test_scores_must_be_finite_and_ordered():
    unordered = body()
    unordered["items"][1]["score"] = 5.0
    assert "ordered" in recommend_problem(unordered, user="7", k=2, known=True, n_items=10)
    nan = body()
    nan["items"][0]["score"] = float("nan")
    assert "finite" in recommend_problem(nan, user="7", k=2, known=True, n_items=10)


def test_similar_and_events_checks():
    good = {"item": "a", "items": body(items=("b", "c"))["items"], "model_version": "v"}
    assert similar_problem(good, item="a", k=2, n_items=10) is None
    itself = {**good, "items": body(items=("a", "c"))["items"]}
    assert "itself" in similar_problem(itself, item="a", k=2, n_items=10)
    assert unknown_item_problem(404, {"error": "unknown_item", "detail": "x"}) is None
    assert "expected 404" in unknown_item_problem(200, {})
    assert events_problem(202, {"accepted": 3}, 3) is None
    assert "accepted=3" in events_problem(202, {"accepted": 2}, 3)


def search_body(query="star wars", user=None, items=("a", "b"), personalised=False):
    return {"query": query, "user": user, "items": body(items=items)["items"], "model_version": "v1",
            "personalised": personalised}


def test_good_search_bodies_pass():
    assert search_problem(search_body(), query="star wars", user=None, k=2, known=False) is None
    assert search_problem(search_body(user="7", personalised=True), query="star wars", user="7", k=5,
                          known=True) is None
    assert search_problem(search_body(items=()), query="star wars", user=None, k=2, known=False,
                          content=False) is None  # shape checks accept an empty answer


@pytest.mark.parametrize(("bad", "kwargs", "expected"), [
    ([], {}, "not a JSON object"),
    ({"query": "star wars"}, {}, "lacks"),
    (search_body(query="star"), {}, "another query"),
    (search_body(user="8"), {}, "another user"),
    (search_body(personalised=True), {}, "personalised=True"),
    (search_body(user="7"), {"user": "7", "known": True}, "known user answered personalised=False"),
    (search_body(items=("a", "b", "c")), {}, "asked k=2, got 3 items"),
    (search_body(items=()), {}, "no match"),
    (search_body(items=("a", "d")), {"excluded": ("d",)}, "excluded"),
])
def test_bad_search_bodies_are_named(bad, kwargs, expected):
    args = {"query": "star wars", "user": None, "k": 2, "known": False} | kwargs
    assert expected in search_problem(bad, **args)


def population() -> Population:
    # user 10 has 1 seen item, user 20 has 9, user 30 none (must never be drawn as "known").
    indptr = np.array([0, 1, 10, 10])
    indices = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    return Population("v", IdMap(np.array([10, 20, 30])), IdMap(np.arange(100, 110)), indptr, indices,
                      np.arange(10, 0, -1).astype(np.float32),
                      titles=["Star Wars (1977)", "Toy Story", "—", "Heat"] + [f"Film {n}" for n in range(6)])


def test_search_queries_are_one_or_two_lowercase_words_of_a_title():
    people, rng = population(), random.Random(0)
    queries = [people.search_query(rng) for _ in range(2000)]
    assert people.has_search and {"star", "star wars", "wars 1977", "heat", "toy story", "film 3"} <= set(queries)
    assert all(1 <= len(query.split()) <= 2 and query == query.lower() for query in queries)
    assert "—" not in queries  # a title without words makes no query
    again = random.Random(0)
    assert [people.search_query(again) for _ in range(20)] == queries[:20]  # seeded: every run sends the same
    no_titles = Population("v", IdMap(np.array([1])), IdMap(np.array([2])), np.array([0, 1]), np.array([0]),
                           np.ones(1, np.float32))
    assert not no_titles.has_search


def test_heavy_users_are_drawn_more_often_and_unknown_ids_are_fresh():
    people, rng = population(), random.Random(0)
    drawn = Counter(people.known_user(rng).user_id for _ in range(5000))
    assert set(drawn) == {"10", "20"} and 7 < drawn["20"] / drawn["10"] < 11
    unknown = {people.unknown_user(rng) for _ in range(1000)}
    assert len(unknown) == 1000 and not any(people.is_known(user) for user in unknown)
    assert all(user.isdigit() for user in unknown)  # integer-id bundle: unknown users look like real ids
    assert people.seen(1) == {str(i) for i in range(100, 109)}
    assert people.popular_item(rng) == "100"  # the popular tenth of 10 items is the top one
    assert people.top_items(2) == [("100", 10.0), ("101", 9.0)]


def test_config_from_env_names_the_variable():
    with pytest.raises(LoadTestConfigError, match="RECSYS_LOADTEST_BUNDLE"):
        LoadConfig.from_env({})
    with pytest.raises(LoadTestConfigError, match="MIX"):
        LoadConfig.from_env({"RECSYS_LOADTEST_BUNDLE": "b", "RECSYS_LOADTEST_MIX": "everything"})
    config = LoadConfig.from_env({"RECSYS_LOADTEST_BUNDLE": "b", "RECSYS_LOADTEST_RATE": "2.5"})
    assert config.rate == 2.5 and config.mix == "full" and config.max_fail_ratio == 0
