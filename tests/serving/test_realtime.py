"""Real-time history: an accepted event changes the next answer, in every worker, across reloads, bounded."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from loadtest.harness import free_port
from serving.app import create_app
from serving.settings import Settings
from tests.fixtures.servers import ADMIN_TOKEN, running_server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def top(client, user: str, k: int = 5) -> list[str]:
    body = client.get("/recommend", params={"user": user, "k": k}).json()
    return [item["item_id"] for item in body["items"]]


def metric(client, name: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_a_click_on_the_top_item_removes_it_from_the_next_answer(client, bundles):
    user = bundles.split.users.ids[0]
    before = top(client, user)
    response = client.post("/events", json={"user": user, "item": before[0], "event": "click"})
    assert response.status_code == 202 and response.json()["unknown_items"] == []
    after = top(client, user)
    assert before[0] not in after and after != before
    # The event's item joined the history the tower and the ranker read, not just the exclusions.
    assert client.post("/recommend", json={"user": user, "k": 5}).json()["items"][0]["item_id"] != before[0]


def test_a_new_user_with_events_gets_personal_recommendations(client, bundles):
    assert client.get("/recommend", params={"user": "newcomer"}).json()["fallback"] == "popular"
    clicked = [bundles.split.items.ids[i] for i in (0, 2, 4)]
    assert client.post("/events", json=[{"user": "newcomer", "item": item} for item in clicked]).status_code == 202
    body = client.get("/recommend", params={"user": "newcomer", "k": 5}).json()
    assert body["fallback"] is None and body["items"]
    assert not set(clicked) & {item["item_id"] for item in body["items"]}


def test_events_for_unknown_items_are_stored_but_not_recommended(client, bundles):
    user = bundles.split.users.ids[1]
    before = top(client, user)
    response = client.post("/events", json={"user": user, "item": "not-in-the-catalogue"})
    assert response.json() == {"accepted": 1, "duplicates": 0, "unknown_items": ["not-in-the-catalogue"]}
    assert top(client, user) == before


def test_the_overlay_is_capped_in_users_and_events(bundles, tmp_path):
    settings = Settings(bundle=bundles.root, events_db=tmp_path / "events.sqlite", overlay_max_users=2,
                        overlay_max_events=3)
    items = bundles.split.items.ids
    with TestClient(create_app(settings)) as client:
        client.post("/events", json=[{"user": "a", "item": item} for item in items[:5]])
        client.post("/events", json={"user": "b", "item": items[0]})
        client.post("/events", json={"user": "c", "item": items[0]})
        assert metric(client, "recsys_overlay_users") == 2 and metric(client, "recsys_overlay_evicted_users") == 1
        assert metric(client, "recsys_overlay_events") == 2  # b's and c's; a (3 of 5 kept) was dropped
        overlay = client.app.state.services.state.current().overlay
        assert overlay.events("a") == [] and [item for item, _ in overlay.events("b")] == [items[0]]
        client.post("/events", json=[{"user": "c", "item": item} for item in items[1:6]])
        assert [item for item, _ in overlay.events("c")] == list(items[3:6])  # the last 3


def test_a_reload_keeps_events_after_the_new_bundles_cutoff(client, bundles):
    user = bundles.split.users.ids[2]
    before = top(client, user)
    cutoff = client.app.state.services.state.current().model.runtime["data"]["cutoff"]
    client.post("/events", json=[{"user": user, "item": before[0]},  # now: after any bundle's cutoff
                                 {"user": user, "item": before[1], "timestamp": cutoff}])  # the bundle knows it
    overlay = client.app.state.services.state.current().overlay
    assert [item for item, _ in overlay.events(user)] == [before[0]]
    response = client.post("/admin/reload", json={"path": str(bundles.version_dir(bundles.v2))}, headers=AUTH)
    assert response.status_code == 200 and response.json()["version"] == bundles.v2
    reloaded = client.app.state.services.state.current().overlay
    assert reloaded is not overlay and [item for item, _ in reloaded.events(user)] == [before[0]]
    assert before[0] not in top(client, user)


@pytest.mark.slow
def test_two_workers_both_answer_with_an_event_posted_to_either(bundles, tmp_path):
    server = running_server("--bundle", str(bundles.root), "--events-db", str(tmp_path / "events.sqlite"),
                            "--workers", "2", port=free_port())
    users = list(bundles.split.users.ids[:5])
    with server as (_, url):
        clicked = {}
        for user in users:
            with httpx.Client(base_url=url, timeout=10) as http:  # a new connection: any worker
                clicked[user] = top(http, user)[0]
                assert http.post("/events", json={"user": user, "item": clicked[user]}).status_code == 202
        time.sleep(Settings.model_fields["overlay_poll_s"].default * 3)  # the stated freshness bound, 3 times
        for _ in range(8):
            for user in users:
                with httpx.Client(base_url=url, timeout=10, headers={"Connection": "close"}) as http:
                    assert clicked[user] not in top(http, user, k=10)
