"""Same answers batched or not: requests sent one by one and all at once get identical bodies
(items, order, scores), and the concurrent run really was answered in batches."""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient

from serving.app import create_app
from tests.fixtures.tiny import serving

CONCURRENCY = 32


def requests_for(users: list[str], items: list[str], timed_every: int = 4) -> list[tuple[str, dict]]:
    """A mix of /recommend (varied k, exclusions, request times, unknown users) and /similar.

    A request without ``at`` happens "now", which moves: with time features (the tiny ranker
    bundles) only requests that send their time have a fixed answer."""
    asks: list[tuple[str, dict]] = []
    for n, user in enumerate(users):
        params: dict = {"user": user, "k": 1 + n % 12}
        if n % 3 == 0:
            params["exclude"] = ",".join(items[n % len(items):n % len(items) + 2])
        if n % timed_every == 0:
            params["at"] = str(10_000_000 + 1000 * n)
        asks.append(("/recommend", params))
        asks.append(("/similar", {"item": items[n % len(items)], "k": 1 + n % 7}))
    asks.append(("/recommend", {"user": "nobody-we-know", "k": 5, "at": "10000000"}))
    return asks


def batch_count(metrics_text: str) -> float:
    return sum(float(v) for v in re.findall(r'^recsys_batch_size_count\{endpoint="[^"]+"\} (\S+)$', metrics_text,
                                            re.MULTILINE))


def one_by_one_and_together(get: Callable[[str, dict], bytes], asks: list[tuple[str, dict]]):
    alone = [get(path, params) for path, params in asks]
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        together = list(pool.map(lambda ask: get(*ask), asks))
    return alone, together


def assert_same_answers_in_batches(get, metrics: Callable[[], str], asks):
    alone, together = one_by_one_and_together(get, asks)
    before = batch_count(metrics())
    _, together = one_by_one_and_together(get, asks)
    batches = batch_count(metrics()) - before
    assert together == alone
    assert batches < 2 * len(asks), "no request was batched with another"  # alone: len(asks) batches


def test_concurrent_requests_get_the_answers_they_get_alone(settings, bundles):
    users = [str(u) for u in bundles.split.users.ids]
    items = [str(i) for i in bundles.split.items.ids]
    with TestClient(create_app(settings)) as client:

        def get(path, params):
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text
            return response.content

        assert_same_answers_in_batches(get, lambda: client.get("/metrics").text, requests_for(users, items))


def test_a_real_server_batches_ranker_bundles_without_changing_answers(tiny, tmp_path):
    from recsys.bundle.load import read_id_maps

    for name in ("teacher", "compressed"):
        bundle = tiny.bundles / name
        users, items = read_id_maps(bundle)
        asks = requests_for([str(u) for u in users.ids[:150]], [str(i) for i in items.ids], timed_every=1)
        with serving(bundle, tmp_path / f"{name}.sqlite", tmp_path / f"{name}.log",
                     RECSYS_QUEUE_DEADLINE_S="60", RECSYS_MAX_QUEUE="10000") as (_, url), \
                httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=CONCURRENCY)) as http:

            def get(path, params):
                response = http.get(path, params=params)
                assert response.status_code == 200, response.text
                return response.content

            assert_same_answers_in_batches(get, lambda: http.get("/metrics").text, asks)
