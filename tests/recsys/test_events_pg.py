"""What only the PostgreSQL store does: choose it by URL, reach the server (or say why not), keep
commits durable, survive a lost connection. Its shared contract runs in test_events.py and
test_event_ids.py (both backends); the server comes from tests/fixtures/postgres.py."""

from __future__ import annotations

import threading

import pytest

from loadtest.harness import free_port
from recsys.data.events import Event, EventStore, EventStoreUnavailable, open_event_store, redacted
from tests.fixtures.postgres import import_driver

psycopg = import_driver()  # recsys.data.events_pg needs it too: imported by the tests that use it


def test_the_location_picks_the_backend(postgres_url, tmp_path):
    from recsys.data.events_pg import PgEventStore

    with open_event_store(postgres_url) as store:
        assert isinstance(store, PgEventStore)
    with open_event_store(postgres_url.replace("postgresql://", "postgres://", 1)) as store:
        assert isinstance(store, PgEventStore)
    with open_event_store(tmp_path / "events.sqlite") as store, open_event_store(str(tmp_path / "e.db")) as other:
        assert isinstance(store, EventStore) and isinstance(other, EventStore)
    with pytest.raises(ValueError, match="unknown scheme 'mysql'.*postgresql://"):
        open_event_store("mysql://shop:secret@db/events")


def test_a_password_never_reaches_a_log_line():
    assert redacted("postgresql://shop:s3cret@db.internal:5433/events") == "postgresql://shop:***@db.internal:5433/events"
    assert redacted("postgresql://shop@db/events") == "postgresql://shop@db/events"
    assert redacted("postgresql://db/events?sslmode=require&password=s3cret") == (
        "postgresql://db/events?sslmode=require&password=***")
    assert redacted("data/events.sqlite") == "data/events.sqlite"


def test_an_unreachable_server_is_named_in_one_clear_error():
    url = f"postgresql://shop:s3cret@127.0.0.1:{free_port()}/events"  # nothing listens there

    with pytest.raises(EventStoreUnavailable, match="cannot connect to the event store") as caught:
        open_event_store(url)

    assert "s3cret" not in str(caught.value) and "shop:***@127.0.0.1" in str(caught.value)
    assert "RECSYS_EVENTS_URL" in str(caught.value)


def _setting(store, name: str) -> str:
    with store._locked() as conn:
        return conn.execute(f"SHOW {name}").fetchone()[0]


def test_commits_wait_for_the_disk_even_where_the_database_says_otherwise(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT set_config('synchronous_commit', 'off', false)")
        database = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')

    with open_event_store(postgres_url) as store:
        assert _setting(store, "synchronous_commit") == "on"


def _terminate_store_sessions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = 'recsys-events' AND datname = current_database()"
                             ).fetchone()[0]


def test_a_lost_connection_fails_one_call_and_the_next_reconnects(postgres_url):
    with open_event_store(postgres_url) as store:
        store.append([Event("u", "a", event_id="e1")])
        assert _terminate_store_sessions(postgres_url) == 1  # e.g. the database restarted

        with pytest.raises(EventStoreUnavailable, match="event store postgresql://"):
            store.append([Event("u", "b", event_id="e2")])
        # The caller cannot know whether that batch was stored: it re-sends it, ids and all.
        assert store.append([Event("u", "b", event_id="e2")]) == 1
        assert store.to_frame()["item_id"].tolist() == ["a", "b"]


def test_a_writer_waits_for_the_append_lock_only_so_long(postgres_url):
    from recsys.data.events_pg import APPEND_LOCK_KEY, PgEventStore

    with open_event_store(postgres_url) as store, psycopg.connect(postgres_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))  # a stuck writer's transaction
        impatient = PgEventStore(postgres_url, busy_timeout_ms=200)

        with pytest.raises(EventStoreUnavailable, match="lock timeout"):
            impatient.append([Event("u", "a")])

        holder.rollback()
        assert impatient.append([Event("u", "a")]) == 1 and store.count() == 1
        impatient.close()


def test_workers_starting_on_an_empty_database_create_the_table_once(postgres_url):
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            open_event_store(postgres_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'events'").fetchone()[0] == 1
