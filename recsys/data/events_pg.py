"""The event log in PostgreSQL, for replicas that cannot share one SQLite file.

Open it with ``recsys.data.events.open_event_store("postgresql://user@host:port/db")``: same
interface and promises as the SQLite `EventStore` (append, count, to_frame, close, context manager).

Durable: :meth:`PgEventStore.append` returns once its COMMIT has returned, and under PostgreSQL's
default ``synchronous_commit = on`` a commit returns only after its WAL is flushed to disk, so an
accepted batch survives the database server crashing too. A connection that finds the setting
``off`` (server configuration or role default) turns it back on for itself.

A commit whose answer is lost (the connection drops during COMMIT) may or may not have happened:
the caller gets `EventStoreUnavailable`, and a retry with the same ``event_id`` stores each event
once either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd
import psycopg

from recsys.data.events import (
    DEFAULT_BUSY_TIMEOUT_MS,
    EventStoreUnavailable,
    OneConnectionPerProcess,
    events_frame,
    redacted,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10

_SCHEMA = """
CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT             NOT NULL CHECK (length(user_id) > 0),
    item_id     TEXT             NOT NULL CHECK (length(item_id) > 0),
    event       TEXT             NOT NULL CHECK (length(event) > 0),
    timestamp   BIGINT           NOT NULL,
    weight      DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    event_id    TEXT             UNIQUE CHECK (length(event_id) > 0)
)
"""
_TABLE_EXISTS = "SELECT to_regclass('events') IS NOT NULL"
_INSERT = (
    "INSERT INTO events (user_id, item_id, event, timestamp, weight, received_at, event_id) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
)
_SELECT_SINCE = "SELECT id, user_id, item_id, timestamp, event, weight FROM events WHERE id > %s ORDER BY id LIMIT %s"

# Ids in commit order. Every append takes this transaction-level advisory lock before its INSERT;
# PostgreSQL releases it only after the COMMIT is visible to new snapshots. So ids (drawn from
# the identity sequence inside the lock) are committed in the order they were drawn, and a reader
# polling ``id > last_seen`` (the real-time overlay) never misses a row: without the lock, A may
# draw 41, B draw 42 and commit first, and a poller that saw 42 skips 41 for good. The other way,
# reading only below the smallest id still in flight, needs transaction-id bookkeeping on every
# read and stalls every reader behind one slow writer; the lock costs one writer at a time (as
# SQLite does anyway), each holding it for one batch and its WAL flush. Advisory locks need no
# privilege on the table; the key is an arbitrary constant ("RECSYSEV") shared by every store on
# this database. The same lock guards creating the table (two first-time workers would collide).
APPEND_LOCK_KEY = 0x5245_4353_5953_4556
_TAKE_APPEND_LOCK = "SELECT pg_advisory_xact_lock(%s)"

# What the server or the network can do to a call (connection lost, lock timeout, shutdown, disk
# full, a read-only server after a failover): a retry may succeed. The batch was rolled back,
# unless the connection dropped during COMMIT, which nobody can tell: hence event ids.
# Integrity and data errors are not here: validation keeps them out, so one is a bug.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError)


class PgEventStore(OneConnectionPerProcess):
    """Append-only event log in one PostgreSQL table, safe across threads, processes and machines.

    One connection per process, used under a lock (as `EventStore` does); a connection lost with
    the server is replaced on the next call.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        super().__init__()
        self.url = url
        self.location = redacted(url)
        self.busy_timeout_ms = busy_timeout_ms
        with self._locked() as conn:
            self._create_table(conn)

    def _append_rows(self, rows: list[tuple]) -> int:
        """One transaction for validated rows (`OneConnectionPerProcess.append`)."""
        with self._locked() as conn, conn.transaction():
            conn.execute(_TAKE_APPEND_LOCK, (APPEND_LOCK_KEY,))
            stored = self._insert(conn, rows)
        log.debug("stored %d of %d events in %s", stored, len(rows), self.location)
        return stored

    def _insert(self, conn: psycopg.Connection, rows: list[tuple]) -> int:
        with conn.cursor() as cursor:
            cursor.executemany(_INSERT, rows)  # rowcount sums the rows: 0 for an event_id already stored
            return cursor.rowcount

    def count(self) -> int:
        with self._locked() as conn:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]

    def to_frame(self, since_id: int = 0, limit: int | None = None) -> pd.DataFrame:
        """Events with ``id > since_id`` in commit order (the first ``limit``), indexed by ``id``."""
        bounds = (int(since_id), None if limit is None else int(limit))  # LIMIT NULL: no limit
        with self._locked() as conn:
            rows = conn.execute(_SELECT_SINCE, bounds).fetchall()
        return events_frame(rows)

    def _create_table(self, conn: psycopg.Connection) -> None:
        # Checked before CREATE: a role allowed to write the table need not be allowed to create one.
        if conn.execute(_TABLE_EXISTS).fetchone()[0]:
            return
        # The session's lock, not a transaction's: each statement after it runs in a transaction of
        # its own, which reads the catalog afresh. A transaction that waited for the lock still
        # believes its cached "no such table" and collides with the worker that just created it.
        conn.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK_KEY,))
        try:
            if not conn.execute(_TABLE_EXISTS).fetchone()[0]:
                conn.execute(_SCHEMA)
                log.info("created the events table in %s", self.location)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK_KEY,))

    @contextmanager
    def _locked(self) -> Iterator[psycopg.Connection]:
        with super()._locked() as conn:
            try:
                yield conn
            except _UNAVAILABLE as exc:
                self._discard()
                raise EventStoreUnavailable(f"event store {self.location}: {_first_line(exc)}") from exc

    def _discard(self) -> None:
        # The next call connects afresh: the server may have restarted, or failed over (a standby
        # promoted; the old connection may still reach a read-only server).
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _open(self) -> psycopg.Connection:
        # autocommit: transactions are explicit (conn.transaction() in append), and a read does
        # not leave a transaction open between polls.
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="recsys-events")
        except psycopg.Error as exc:
            raise EventStoreUnavailable(
                f"cannot connect to the event store {self.location}: {_first_line(exc)}; check that PostgreSQL "
                "is running and the URL (RECSYS_EVENTS_URL / --events-url) names its host, port, user and database"
            ) from exc
        # As SQLite's busy_timeout: a writer waits this long for the append lock, then fails (503).
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.busy_timeout_ms)}ms",))
        if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
            conn.execute("SET synchronous_commit = on")
            log.warning("event store %s: synchronous_commit was off; turned on for this store's connections "
                        "(an accepted event must survive a crash)", self.location)
        return conn


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
