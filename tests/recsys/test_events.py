"""The event store's contract on both backends (``store`` and ``event_location`` come from
tests/recsys/conftest.py: SQLite and PostgreSQL), then what only the SQLite file does: WAL, and
the migration of a file written before event ids."""

import math
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.data import events as events_module
from recsys.data.events import COLUMNS, Event, EventStore, InvalidEvent, open_event_store

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sqlite_store(tmp_path):
    with EventStore(tmp_path / "nested" / "dir" / "events.db") as opened:
        yield opened


def _fork_context():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the fork start method")
    return multiprocessing.get_context("fork")


def test_round_trip_in_insertion_order(store):
    before = int(time.time())
    stored = store.append(
        [
            Event("u1", "i9", timestamp=100),
            Event("u2", "i1", event="purchase", timestamp=50, weight=3.0),
            Event(7, np.int64(8), timestamp=np.int64(200), weight=np.float32(0.5)),
            Event("u1", "i2"),
        ]
    )
    frame = store.to_frame()

    assert stored == 4
    assert store.count() == 4
    assert list(frame.columns) == COLUMNS
    assert frame["user_id"].tolist() == ["u1", "u2", "7", "u1"]
    assert frame["item_id"].tolist() == ["i9", "i1", "8", "i2"]
    assert frame["event"].tolist() == ["interaction", "purchase", "interaction", "interaction"]
    assert frame["timestamp"].tolist()[:3] == [100, 50, 200]
    assert before <= frame["timestamp"].iloc[3] <= time.time()
    assert frame["weight"].tolist() == [1.0, 3.0, 0.5, 1.0]
    assert frame.dtypes.astype(str).to_dict() == {
        "user_id": "object", "item_id": "object", "timestamp": "int64", "event": "object", "weight": "float64"
    }


def test_to_frame_resumes_from_the_last_id(store):
    store.append([Event("u1", "a", timestamp=1), Event("u1", "b", timestamp=2)])
    first = store.to_frame()
    store.append([Event("u2", "c", timestamp=3)])

    rest = store.to_frame(since_id=first.index.max())

    assert rest["item_id"].tolist() == ["c"]
    assert store.to_frame(since_id=rest.index.max()).empty


def test_empty_store_and_empty_batch(store):
    assert store.append([]) == 0
    assert store.count() == 0
    frame = store.to_frame()
    assert frame.empty and list(frame.columns) == COLUMNS
    assert frame["timestamp"].dtype == "int64"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Event("", "i1"), "user_id is empty"),
        (Event("  ", "i1"), "user_id is empty"),
        (Event("u1", ""), "item_id is empty"),
        (Event("u1", "i1", event=""), "event type is empty"),
        (Event("u1", "i1", timestamp=-1), "timestamp"),
        (Event("u1", "i1", timestamp=1.5), "timestamp"),
        (Event("u1", "i1", weight=math.nan), "weight"),
        (Event("u1", "i1", weight="heavy"), "weight"),
        (Event("u1", "i1", event_id=""), "event_id is empty"),
        (Event("u1", "i1", event_id=" "), "event_id is empty"),
        (Event("u1", "i\x001"), "NUL"),
    ],
)
def test_a_batch_with_a_bad_event_stores_nothing(store, bad, message):
    store.append([Event("u0", "i0")])

    with pytest.raises(InvalidEvent, match=rf"event 1 .*{message}.*nothing from the batch was stored"):
        store.append([Event("u1", "i1"), bad, Event("u2", "i2")])

    assert store.count() == 1


def test_a_failure_inside_the_transaction_rolls_back_the_batch(store, monkeypatch):
    # Skip the Python-side checks so the row reaches the database and fails there, mid-batch.
    monkeypatch.setattr(events_module, "_validate", lambda position, event: None)

    with pytest.raises(Exception, match="(?i)check constraint"):  # sqlite3's or psycopg's IntegrityError
        store.append([Event("u1", "i1"), Event("u2", "i2"), Event("", "i3")])

    assert store.count() == 0
    assert store.append([Event("u1", "i1")]) == 1


def _append_batches(store, tag, batches=20, batch_size=5):
    for batch in range(batches):
        store.append([Event(tag, f"{tag}-{batch}-{n}") for n in range(batch_size)])


def _items(store):
    return set(store.to_frame()["item_id"])


def _expected_items(tags, batches=20, batch_size=5):
    return {f"{tag}-{batch}-{n}" for tag in tags for batch in range(batches) for n in range(batch_size)}


def test_concurrent_appends_from_threads(store):
    tags = [f"thread{n}" for n in range(4)]
    threads = [threading.Thread(target=_append_batches, args=(store, tag)) for tag in tags]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert store.count() == 400
    assert _items(store) == _expected_items(tags)


def _append_from_own_store(location, tag):
    with open_event_store(location) as own:
        _append_batches(own, tag)


def test_concurrent_appends_from_processes(event_location):
    parent = open_event_store(event_location)
    tags = ["proc0", "proc1"]
    processes = [_fork_context().Process(target=_append_from_own_store, args=(event_location, tag)) for tag in tags]
    for process in processes:
        process.start()
    _append_batches(parent, "parent")
    for process in processes:
        process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0, 0]
    assert parent.count() == 300
    assert _items(parent) == _expected_items([*tags, "parent"])
    parent.close()


def test_a_forked_child_can_use_an_inherited_store(store):
    store.append([Event("parent", "before-fork")])
    child = _fork_context().Process(target=_append_batches, args=(store, "child", 2, 2))
    child.start()
    child.join(timeout=30)

    assert child.exitcode == 0
    store.append([Event("parent", "after-fork")])
    assert store.count() == 6


def test_rows_survive_the_process_dying_right_after_append(event_location):
    script = textwrap.dedent(
        f"""
        import os
        from recsys.data.events import Event, open_event_store
        store = open_event_store({str(event_location)!r})
        store.append([Event("u", f"i{{n}}", timestamp=n) for n in range(50)])
        os._exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)

    with open_event_store(event_location) as reopened:
        frame = reopened.to_frame()
    assert frame["item_id"].tolist() == [f"i{n}" for n in range(50)]
    assert frame["timestamp"].tolist() == list(range(50))


def test_store_is_in_wal_mode_with_full_sync(sqlite_store):
    sqlite_store.append([Event("u", "i")])
    with sqlite_store._locked() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_close_then_reuse_reopens(store):
    store.append([Event("u", "i")])
    store.close()
    store.close()
    assert store.count() == 1


# The table as every events.sqlite written before event ids has it.
OLD_SCHEMA = """
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL CHECK (length(user_id) > 0),
    item_id     TEXT    NOT NULL CHECK (length(item_id) > 0),
    event       TEXT    NOT NULL CHECK (length(event) > 0),
    timestamp   INTEGER NOT NULL,
    weight      REAL    NOT NULL,
    received_at REAL    NOT NULL
)
"""
OLD_INSERT = "INSERT INTO events (user_id, item_id, event, timestamp, weight, received_at) VALUES (?, ?, ?, ?, ?, ?)"


def _old_file(path: Path, rows: int) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(OLD_SCHEMA)
        conn.executemany(OLD_INSERT, [("old", f"i{n}", "click", n, 1.0, 0.0) for n in range(rows)])
    conn.close()
    return path


def _event_id_column_and_index(path: Path) -> tuple[list[str], list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
        unique = [(row[1], row[2]) for row in conn.execute("PRAGMA index_list(events)") if row[2]]
    finally:
        conn.close()
    return columns, unique


def test_an_old_file_gets_event_ids_and_keeps_its_rows(tmp_path):
    path = _old_file(tmp_path / "old.sqlite", rows=3)

    with EventStore(path) as store:
        assert store.to_frame()["item_id"].tolist() == ["i0", "i1", "i2"]
        assert store.append([Event("u", "new", event_id="e1"), Event("u", "again", event_id="e1")]) == 1
        assert store.append([Event("u", "retry", event_id="e1"), Event("u", "no-id")]) == 1
        assert store.to_frame(since_id=3)["item_id"].tolist() == ["new", "no-id"]
    columns, unique = _event_id_column_and_index(path)
    assert columns[-1] == "event_id" and unique == [("events_event_id", 1)]
    EventStore(path).close()
    assert _event_id_column_and_index(path) == (columns, unique)  # reopening changes nothing

    # A server of the previous version, still running during an upgrade, can append to the migrated file.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(OLD_INSERT, ("old", "late", "click", 9, 1.0, 0.0))
    conn.close()
    with EventStore(path) as store:
        assert store.count() == 6


def test_a_new_file_and_a_migrated_one_have_the_same_event_id_constraint(tmp_path):
    EventStore(tmp_path / "new.sqlite").close()
    EventStore(_old_file(tmp_path / "old.sqlite", rows=1)).close()

    new_columns, new_unique = _event_id_column_and_index(tmp_path / "new.sqlite")
    old_columns, old_unique = _event_id_column_and_index(tmp_path / "old.sqlite")
    assert new_columns == old_columns and new_unique == old_unique == [("events_event_id", 1)]


def _open_and_append(path, tag):
    with EventStore(path) as store:
        store.append([Event(tag, "i", event_id=tag)])


def test_workers_opening_an_old_file_at_once_migrate_it_once(tmp_path):
    path = _old_file(tmp_path / "old.sqlite", rows=2)
    tags = [f"worker{n}" for n in range(4)]
    processes = [_fork_context().Process(target=_open_and_append, args=(path, tag)) for tag in tags]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0] * len(tags)
    with EventStore(path) as store:
        assert sorted(store.to_frame()["user_id"]) == ["old", "old", *tags]
    assert _event_id_column_and_index(path)[0].count("event_id") == 1


def test_a_postgresql_url_without_its_driver_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "recsys.data.events_pg", None)  # as if psycopg were not installed

    with pytest.raises(events_module.EventStoreUnavailable, match=r"driver is missing.*pip install 'psycopg\["):
        open_event_store("postgresql://shop:s3cret@db/events")
