"""POST /events on PostgreSQL (``RECSYS_EVENTS_URL``) and idempotent retries on both stores.

A 202 means the batch is committed; a batch re-sent with the same event ids is stored once,
``accepted`` counting what the request stored and ``duplicates`` what already was. Real servers
(tests/fixtures/servers.py) on the session's PostgreSQL (tests/fixtures/postgres.py) show the
shared store feeding every replica's real-time history, and surviving ``kill -9`` mid-burst.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from loadtest.harness import free_port
from recsys.data.events import open_event_store
from serving.__main__ import main as serving_main
from serving.app import create_app
from serving.settings import Settings
from tests.fixtures.postgres import import_driver
from tests.fixtures.servers import running_server

psycopg = import_driver()
CLIENT_TIMEOUT_S = 10


@pytest.fixture(params=["sqlite", "postgres"])
def any_store_settings(request, settings) -> Settings:
    if request.param == "sqlite":
        return settings
    return settings.model_copy(update={"events_url": request.getfixturevalue("postgres_url")})


def stored_count(settings: Settings) -> int:
    with open_event_store(settings.event_store) as store:
        return store.count()


def event(n: int, user: str = "u0", item: str = "i1") -> dict:
    return {"user": user, "item": item, "event_id": f"e{n}"}


def test_a_resent_batch_is_stored_once_and_counted_as_duplicates(any_store_settings):
    with TestClient(create_app(any_store_settings)) as client:
        first = client.post("/events", json=[event(1), event(2), event(2)])
        again = client.post("/events", json=[event(1), event(2), event(3)])
        anonymous = [client.post("/events", json={"user": "u0", "item": "i1"}) for _ in range(2)]

    assert first.status_code == again.status_code == 202
    assert (first.json()["accepted"], first.json()["duplicates"]) == (2, 1)  # e2 twice in one batch
    assert (again.json()["accepted"], again.json()["duplicates"]) == (1, 2)
    assert [response.json()["accepted"] for response in anonymous] == [1, 1]  # no event_id: stored each time
    assert stored_count(any_store_settings) == 5


def test_event_ids_follow_the_deployments_id_length(bundles, tmp_path):
    settings = Settings(bundle=bundles.root, events_db=tmp_path / "events.sqlite", max_id_length=8)
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json={"user": "u0", "item": "i1", "event_id": "e" * 8}).status_code == 202
        response = client.post("/events", json={"user": "u0", "item": "i1", "event_id": "e" * 9})
    assert response.status_code == 422 and response.json()["detail"].startswith("body.event.event_id")


def _terminate_store_sessions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = 'recsys-events' AND datname = current_database()"
                             ).fetchone()[0]


def test_a_lost_database_connection_is_a_503_and_the_retry_is_stored_once(settings, postgres_url):
    quiet = settings.model_copy(update={"events_url": postgres_url, "overlay_poll_s": 60.0})  # feeder idle
    batch = [event(1), event(2)]
    with TestClient(create_app(quiet)) as client:
        assert _terminate_store_sessions(postgres_url) == 1  # e.g. the database restarted or failed over
        lost = client.post("/events", json=batch)
        retried = client.post("/events", json=batch)

    assert lost.status_code == 503 and lost.json()["error"] == "event_store_unavailable"
    assert "retry later with the same event ids" in lost.json()["detail"]
    assert retried.status_code == 202 and retried.json()["accepted"] + retried.json()["duplicates"] == 2
    assert stored_count(quiet) == 2


def test_an_unreachable_database_stops_the_server_with_one_line(bundles, capsys):
    url = f"postgresql://shop:s3cret@127.0.0.1:{free_port()}/events"  # nothing listens there

    assert serving_main(["--bundle", str(bundles.root), "--events-url", url]) == 2

    message = capsys.readouterr().err.strip()
    assert message.startswith("python -m serving: error: cannot connect to the event store postgresql://shop:***@")
    assert "\n" not in message and "s3cret" not in message


def test_an_events_url_that_is_not_postgresql_is_refused(bundles, capsys):
    assert serving_main(["--bundle", str(bundles.root), "--events-url", "mysql://db/events"]) == 2
    assert "setting events_url: String should match pattern" in capsys.readouterr().err


def rows_by_event_id(url: str) -> dict[str, list[tuple[str, str]]]:
    """The events table straight from PostgreSQL: event_id -> every (user, item) stored under it."""
    rows: dict[str, list[tuple[str, str]]] = {}
    with psycopg.connect(url) as conn:
        for event_id, user, item in conn.execute("SELECT event_id, user_id, item_id FROM events ORDER BY id"):
            rows.setdefault(event_id, []).append((user, item))
    return rows


def top(http: httpx.Client, user: str, k: int = 10) -> list[str]:
    response = http.get("/recommend", params={"user": user, "k": k})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_a_server_on_postgres_stores_the_event_there_and_answers_with_it(bundles, postgres_url, monkeypatch):
    monkeypatch.setenv("RECSYS_EVENTS_URL", postgres_url)
    user = bundles.split.users.ids[0]
    with running_server("--bundle", str(bundles.root)) as (_, url), httpx.Client(base_url=url,
                                                                               timeout=CLIENT_TIMEOUT_S) as http:
        before = top(http, user)
        response = http.post("/events", json={"user": user, "item": before[0], "event": "click", "event_id": "c1"})
        assert response.status_code == 202 and response.json()["accepted"] == 1
        assert rows_by_event_id(postgres_url) == {"c1": [(user, before[0])]}  # committed before the 202
        assert before[0] not in top(http, user)  # the real-time history read it back from PostgreSQL


@pytest.mark.slow  # two server processes
def test_replicas_sharing_postgres_answer_with_each_others_events(bundles, postgres_url):
    users = list(bundles.split.users.ids[:4])
    replica = ("--bundle", str(bundles.root), "--events-url", postgres_url)
    with running_server(*replica) as (_, first), running_server(*replica) as (_, second), \
            httpx.Client(base_url=first, timeout=CLIENT_TIMEOUT_S) as one, \
            httpx.Client(base_url=second, timeout=CLIENT_TIMEOUT_S) as other:
        clicked = {}
        for n, user in enumerate(users):
            to, elsewhere = (one, other) if n % 2 == 0 else (other, one)
            clicked[user] = top(elsewhere, user)[0]
            assert to.post("/events", json={"user": user, "item": clicked[user]}).status_code == 202
        time.sleep(Settings.model_fields["overlay_poll_s"].default * 3)  # the stated freshness bound, 3 times
        for user in users:
            assert clicked[user] not in top(one, user) and clicked[user] not in top(other, user)


KILL_REQUESTS = 400  # requests in the burst, each with EVENTS_PER_REQUEST events of unique ids
EVENTS_PER_REQUEST = 2
KILL_AFTER = 150  # 202s seen before the server is killed
SENDERS = 4
RESENT_SAMPLE = 25  # answered requests sent again after the restart


def burst_request(n: int, items: list[str]) -> list[dict]:
    return [{"user": f"burst-{n % 25}", "item": items[(n + k) % len(items)], "event_id": f"burst-{n}-{k}"}
            for k in range(EVENTS_PER_REQUEST)]


def send_burst(url: str, requests: list[list[dict]], answered: dict[int, dict], kill_now: threading.Event) -> None:
    """Send every request from SENDERS threads; ``answered`` gets each 202's body. Sets ``kill_now``
    at KILL_AFTER answers; a request that gets no 202 (the server died under it) is simply left out."""
    todo: queue.Queue[int] = queue.Queue()
    for n in range(len(requests)):
        todo.put(n)
    lock = threading.Lock()

    def sender() -> None:
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as http:
            while True:
                try:
                    n = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    response = http.post("/events", json=requests[n])
                except httpx.TransportError:
                    continue  # killed mid-request, or refused afterwards: no answer
                if response.status_code == 202:
                    with lock:
                        answered[n] = response.json()
                        if len(answered) >= KILL_AFTER:
                            kill_now.set()

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "the burst did not finish in 120 s"


@pytest.mark.slow  # a real server killed mid-burst and restarted: end to end
def test_a_burst_survives_kill_9_and_retries_store_every_event_exactly_once(bundles, postgres_url):
    items = list(bundles.split.items.ids)
    requests = [burst_request(n, items) for n in range(KILL_REQUESTS)]
    answered: dict[int, dict] = {}
    kill_now = threading.Event()
    server = ("--bundle", str(bundles.root), "--events-url", postgres_url)

    with running_server(*server) as (process, url):
        burst = threading.Thread(target=send_burst, args=(url, requests, answered, kill_now))
        burst.start()
        assert kill_now.wait(120), "the server never answered enough requests"
        os.kill(process.pid, signal.SIGKILL)  # mid-burst: the senders are still sending
        burst.join(timeout=150)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    answered_before_kill = dict(answered)
    unanswered = [n for n in range(KILL_REQUESTS) if n not in answered_before_kill]
    assert KILL_AFTER <= len(answered_before_kill) < KILL_REQUESTS and unanswered

    resent = sorted(answered_before_kill)[:: max(1, len(answered_before_kill) // RESENT_SAMPLE)][:RESENT_SAMPLE]
    with running_server(*server) as (_, url), httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as http:
        retries = {n: http.post("/events", json=requests[n]) for n in unanswered + resent}
    assert all(response.status_code == 202 for response in retries.values())
    assert all(response.json()["accepted"] + response.json()["duplicates"] == EVENTS_PER_REQUEST
               for response in retries.values())
    assert all(retries[n].json() == {**answered_before_kill[n], "accepted": 0, "duplicates": EVENTS_PER_REQUEST}
               for n in resent)

    rows = rows_by_event_id(postgres_url)
    expected = {event["event_id"]: [(event["user"], event["item"])] for request in requests for event in request}
    assert rows == expected  # every event sent, each stored exactly once, as first sent
    committed_unanswered = sum(retries[n].json()["duplicates"] for n in unanswered)
    print(f"\nkill test: {KILL_REQUESTS} requests / {KILL_REQUESTS * EVENTS_PER_REQUEST} events sent; "
          f"{len(answered_before_kill)} requests answered 202 before kill -9; {len(unanswered)} unanswered, retried "
          f"after the restart ({committed_unanswered} of their events had been committed, reported as duplicates); "
          f"{len(resent)} answered requests re-sent ({len(resent) * EVENTS_PER_REQUEST} duplicates); "
          f"{sum(len(stored) for stored in rows.values())} events stored, {len(rows)} distinct event ids")
