"""Ids, on both backends (tests/recsys/conftest.py): a client's ``event_id`` makes a re-sent batch
store each event once, and the store's own ids are committed in order, so a reader polling
``to_frame(since_id=last)`` (the real-time overlay) gets every event exactly once."""

from __future__ import annotations

import threading
import time

import pytest

from recsys.data.events import Event, open_event_store

HOLD_S = 0.5  # how long a writer keeps its transaction open after inserting, in the slow-writer tests
JOIN_TIMEOUT_S = 30


def test_an_event_id_sent_twice_in_one_batch_is_stored_once(store):
    stored = store.append([Event("u", "first", event_id="e1"), Event("u", "second", event_id="e1"),
                           Event("u", "other", event_id="e2")])

    assert stored == 2 and store.count() == 2
    assert store.to_frame()["item_id"].tolist() == ["first", "other"]  # the first one sent wins


def test_an_event_id_already_stored_is_skipped_in_a_later_batch(store):
    assert store.append([Event("u", "a", event_id="e1"), Event("u", "b", event_id="e2")]) == 2

    assert store.append([Event("u", "b", event_id="e2"), Event("u", "c", event_id="e3")]) == 1
    assert store.append([Event("u", "a", event_id="e1")]) == 0
    assert store.to_frame()["item_id"].tolist() == ["a", "b", "c"]


def test_events_without_an_id_are_stored_every_time(store):
    assert store.append([Event("u", "a"), Event("u", "a")]) == 2
    assert store.append([Event("u", "a")]) == 1
    assert store.count() == 3


def test_event_ids_are_text(store):
    assert store.append([Event("u", "a", event_id=7)]) == 1
    assert store.append([Event("u", "a", event_id="7")]) == 0


def test_event_ids_are_shared_by_every_client_of_the_store(event_location, store):
    store.append([Event("u", "a", event_id="e1")])
    with open_event_store(event_location) as other:  # another worker, replica or process
        assert other.append([Event("u", "a", event_id="e1"), Event("u", "b", event_id="e2")]) == 1
    assert store.count() == 2


def _hold_transaction_open(monkeypatch, store, inserted: threading.Event) -> None:
    """Make ``store``'s next appends keep their transaction open for `HOLD_S` after inserting: ids
    drawn, not yet committed (the window in which a concurrent writer could commit a larger id)."""
    insert = store._insert

    def insert_then_hold(conn, rows):
        stored = insert(conn, rows)
        inserted.set()
        time.sleep(HOLD_S)
        return stored

    monkeypatch.setattr(store, "_insert", insert_then_hold)


def _in_thread(target, *args) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(target(*args)))
    thread.start()
    return thread, results


def test_a_retry_while_the_first_attempt_is_still_committing_stores_each_event_once(event_location, monkeypatch):
    first, retry = open_event_store(event_location), open_event_store(event_location)
    batch = [Event("u", f"i{n}", event_id=f"e{n}") for n in range(5)]
    inserted = threading.Event()
    _hold_transaction_open(monkeypatch, first, inserted)

    attempt, answers = _in_thread(first.append, batch)
    assert inserted.wait(JOIN_TIMEOUT_S)
    attempt.join(timeout=HOLD_S / 5)  # the client's timeout: it gives up without an answer
    assert attempt.is_alive()
    # Re-sent as it was, plus one new event: it waits for the first attempt's commit, then skips its events.
    assert retry.append([*batch, Event("u", "i5", event_id="e5")]) == 1
    attempt.join(timeout=JOIN_TIMEOUT_S)

    assert answers == [5]
    assert retry.to_frame()["item_id"].tolist() == [f"i{n}" for n in range(6)]
    first.close()
    retry.close()


def test_a_retry_after_an_attempt_that_failed_stores_everything(store, monkeypatch):
    def insert_then_fail(conn, rows):
        insert(conn, rows)
        raise TimeoutError("the connection dropped before COMMIT")

    insert = store._insert
    batch = [Event("u", f"i{n}", event_id=f"e{n}") for n in range(3)]
    monkeypatch.setattr(store, "_insert", insert_then_fail)
    with pytest.raises(TimeoutError):
        store.append(batch)
    monkeypatch.undo()

    assert store.count() == 0  # rolled back: the ids were never stored, so they do not block the retry
    assert store.append(batch) == 3


def test_a_writer_that_commits_late_never_hides_its_events_from_a_poller(event_location, monkeypatch):
    """The slow writer draws its id first; the fast one must not commit a larger id before it does,
    or a poller that read the larger id would skip the smaller one for good."""
    slow, fast, reader = (open_event_store(event_location) for _ in range(3))
    inserted = threading.Event()
    _hold_transaction_open(monkeypatch, slow, inserted)

    slow_writer, _ = _in_thread(slow.append, [Event("slow", "a")])
    assert inserted.wait(JOIN_TIMEOUT_S)
    fast_writer, _ = _in_thread(fast.append, [Event("fast", "b")])
    seen = _poll_until_done(reader, [slow_writer, fast_writer])

    assert sorted(seen) == ["a", "b"]
    for store in (slow, fast, reader):
        store.close()


def _poll_until_done(reader, writers: list[threading.Thread]) -> list[str]:
    """What a poller reading ``id > last_seen`` collects while ``writers`` run, then once more."""
    seen, last_id = [], 0
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while any(writer.is_alive() for writer in writers) and time.monotonic() < deadline:
        frame = reader.to_frame(since_id=last_id)
        if not frame.empty:
            seen += frame["item_id"].tolist()
            last_id = int(frame.index.max())
    for writer in writers:
        writer.join(timeout=JOIN_TIMEOUT_S)
    seen += reader.to_frame(since_id=last_id)["item_id"].tolist()
    return seen


def _append_many(location, tag: str, batches: int, batch_size: int) -> None:
    with open_event_store(location) as own:
        for batch in range(batches):
            own.append([Event(tag, f"{tag}-{batch}-{n}", event_id=f"{tag}-{batch}-{n}") for n in range(batch_size)])


def test_a_poller_gets_every_event_of_concurrent_writers_exactly_once(event_location):
    tags, batches, batch_size = ["w0", "w1", "w2"], 60, 3
    open_event_store(event_location).close()  # the table exists before the race starts
    writers = [threading.Thread(target=_append_many, args=(event_location, tag, batches, batch_size))
               for tag in tags]
    with open_event_store(event_location) as reader:
        for writer in writers:
            writer.start()
        seen = _poll_until_done(reader, writers)

    expected = {f"{tag}-{batch}-{n}" for tag in tags for batch in range(batches) for n in range(batch_size)}
    assert len(seen) == len(expected) and set(seen) == expected
