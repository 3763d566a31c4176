"""POST /events: 202 only once durable; bad bodies are 422 JSON and store nothing."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from fastapi.testclient import TestClient

from recsys.data.events import EventStore
from serving.app import create_app
from tests.fixtures.servers import running_server


def stored(settings) -> int:
    with EventStore(settings.events_db) as store:
        return store.count()


def test_one_event_and_a_batch_are_accepted(client, settings):
    one = client.post("/events", json={"user": "u0", "item": "i3", "event": "purchase", "timestamp": 1_700_000_000})
    assert one.status_code == 202 and one.json() == {"accepted": 1, "duplicates": 0, "unknown_items": []}
    batch = [{"user": "brand-new-user", "item": "brand-new-item"}, {"user": "u1", "item": "i2", "event": "view"}]
    response = client.post("/events", json=batch)
    # Stored for the next retrain, but the served bundle cannot recommend an item it does not know.
    assert response.status_code == 202 and response.json() == {"accepted": 2, "duplicates": 0,
                                                                "unknown_items": ["brand-new-item"]}
    with EventStore(settings.events_db) as store:
        frame = store.to_frame()
    assert frame["user_id"].tolist() == ["u0", "brand-new-user", "u1"]
    assert frame["event"].tolist() == ["purchase", "interaction", "view"]
    assert frame["timestamp"].iloc[0] == 1_700_000_000


BAD_BODIES = {
    "not json": b"{not json",
    "not utf-8": b'{"user": "\xff\xfe", "item": "i1"}',
    "truncated json": b'[{"user": "u0", "item": "i1"}',
    "json null": b"null",
    "json string": b'"u0"',
    "empty batch": b"[]",
    "user is a number": b'{"user": 1, "item": "i1"}',
    "item missing": b'{"user": "u0"}',
    "empty user": b'{"user": "", "item": "i1"}',
    "blank item": b'{"user": "u0", "item": "   "}',
    "control character": b'{"user": "u\\u0000", "item": "i1"}',
    "over-long id": json.dumps({"user": "x" * 257, "item": "i1"}).encode(),
    "timestamp as string": b'{"user": "u0", "item": "i1", "timestamp": "1700000000"}',
    "timestamp as float": b'{"user": "u0", "item": "i1", "timestamp": 1.5}',
    "timestamp as bool": b'{"user": "u0", "item": "i1", "timestamp": true}',
    "negative timestamp": b'{"user": "u0", "item": "i1", "timestamp": -1}',
    "timestamp in milliseconds": b'{"user": "u0", "item": "i1", "timestamp": 1700000000000}',
    "huge timestamp": b'{"user": "u0", "item": "i1", "timestamp": 100000000000000000000000}',
    "unknown field": b'{"user": "u0", "item": "i1", "weight": 2}',
    "empty event type": b'{"user": "u0", "item": "i1", "event": ""}',
    "one bad event in a batch": b'[{"user": "u0", "item": "i1"}, {"user": "u0", "item": 5}]',
    "lone surrogate in a key": b'{"user": "u0", "item": "i1", "\\ud800": 1}',
    "too many events": json.dumps([{"user": "u", "item": "i"}] * 1001).encode(),
    "empty event_id": b'{"user": "u0", "item": "i1", "event_id": ""}',
    "blank event_id": b'{"user": "u0", "item": "i1", "event_id": "  "}',
    "event_id with a control character": b'{"user": "u0", "item": "i1", "event_id": "e\\u0007"}',
    "over-long event_id": json.dumps({"user": "u0", "item": "i1", "event_id": "e" * 257}).encode(),
    "event_id is a number": b'{"user": "u0", "item": "i1", "event_id": 17}',
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_are_422_json_and_store_nothing(client, settings, body):
    response = client.post("/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"]
    assert stored(settings) == 0


def test_error_detail_points_at_the_bad_field(client):
    response = client.post("/events", json=[{"user": "u0", "item": "i1"}, {"user": "u0"}])
    assert response.json()["detail"] == "body.events.1.item: Field required"


def test_a_body_over_the_size_limit_is_413(client, settings):
    body = b'{"user": "u0", "item": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post("/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_events_survive_a_restart_of_the_app(settings):
    with TestClient(create_app(settings)) as first:
        assert first.post("/events", json=[{"user": f"u{i}", "item": "i1"} for i in range(5)]).status_code == 202
    with TestClient(create_app(settings)) as second:
        assert second.post("/events", json={"user": "u9", "item": "i2"}).status_code == 202
    assert stored(settings) == 6


@pytest.mark.slow  # a real server process killed mid-stream: end to end
def test_accepted_events_survive_the_server_being_killed(bundles, tmp_path):
    events_db = tmp_path / "killed.sqlite"
    with running_server("--bundle", str(bundles.root), "--events-db", str(events_db)) as (process, url):
        with httpx.Client(base_url=url, timeout=10) as http:
            accepted = 0
            for batch in range(10):
                response = http.post("/events", json=[{"user": f"u{batch}", "item": f"i{n}"} for n in range(3)])
                assert response.status_code == 202
                accepted += response.json()["accepted"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    with EventStore(events_db) as store:
        assert store.count() == accepted == 30


def test_a_streamed_body_over_the_size_limit_is_413(client, settings):
    def chunks():
        yield b'{"user": "u0", "item": "'
        for _ in range(settings.max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    response = client.post("/events", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
