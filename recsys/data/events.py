"""Durable store for feedback events: the server appends them, the next retrain reads them.

SQLite in WAL mode with ``synchronous=FULL``: once :meth:`EventStore.append` returns, the batch
is on disk and survives the process being killed. Several server worker processes may append
to the same file concurrently; SQLite serialises the writers and ``busy_timeout`` makes each
one wait its turn instead of failing. When one file is not enough (replicas on several
machines), `recsys.data.events_pg.PgEventStore` keeps the same log in PostgreSQL;
:func:`open_event_store` picks the backend from the location, so no caller branches on it.

An event may carry a client ``event_id``: a batch re-sent after a timeout stores each id once.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["user_id", "item_id", "timestamp", "event", "weight"]
DEFAULT_BUSY_TIMEOUT_MS = 10_000

POSTGRES_SCHEMES = ("postgresql", "postgres")

# event_id is declared once and added to older files by ALTER TABLE, which cannot add a UNIQUE
# column: uniqueness is an index in new and migrated files alike, so both end up the same.
_EVENT_ID_COLUMN = "event_id TEXT CHECK (event_id IS NULL OR length(event_id) > 0)"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL CHECK (length(user_id) > 0),
    item_id     TEXT    NOT NULL CHECK (length(item_id) > 0),
    event       TEXT    NOT NULL CHECK (length(event) > 0),
    timestamp   INTEGER NOT NULL,
    weight      REAL    NOT NULL,
    received_at REAL    NOT NULL,
    {_EVENT_ID_COLUMN}
)
"""
_EVENT_ID_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id)"
# ON CONFLICT (event_id), not INSERT OR IGNORE: OR IGNORE would also silently drop a row that
# breaks a CHECK or NOT NULL, where the batch must fail instead. NULL event ids never conflict.
_INSERT = (
    "INSERT INTO events (user_id, item_id, event, timestamp, weight, received_at, event_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)
_DTYPES = {
    "id": "int64",
    "user_id": object,
    "item_id": object,
    "timestamp": "int64",
    "event": object,
    "weight": "float64",
}
_SELECT_SINCE = "SELECT id, user_id, item_id, timestamp, event, weight FROM events WHERE id > ? ORDER BY id LIMIT ?"


class InvalidEvent(ValueError):
    """An event in a batch cannot be stored; the whole batch was rejected."""


class EventStoreUnavailable(ConnectionError):
    """The store cannot be reached now (e.g. PostgreSQL is down); a retry may succeed, and stores a
    batch sent with event ids once even if this call's commit happened after all."""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event: str = "interaction"
    timestamp: int | None = None  # unix seconds; None means "when it was appended"
    weight: float = 1.0
    # The client's id for the event: stored once however often it is sent (first one wins).
    event_id: str | None = None


class EventLog(Protocol):
    """What every event store answers: `EventStore` (SQLite) and `events_pg.PgEventStore`."""

    def append(self, events: Sequence[Event]) -> int: ...

    def count(self) -> int: ...

    def to_frame(self, since_id: int = 0, limit: int | None = None) -> pd.DataFrame: ...

    def close(self) -> None: ...

    def __enter__(self) -> EventLog: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def open_event_store(location: str | os.PathLike[str]) -> EventLog:
    """The store at ``location``: a ``postgresql://`` URL opens PostgreSQL, anything else is a SQLite file."""
    scheme = urlsplit(str(location)).scheme if "://" in str(location) else ""
    if scheme in POSTGRES_SCHEMES:
        try:
            from recsys.data.events_pg import PgEventStore  # psycopg is only needed for PostgreSQL
        except ImportError as exc:
            raise EventStoreUnavailable(f"event store {redacted(location)}: the PostgreSQL driver is missing "
                                        f"({exc}); install it with `pip install 'psycopg[binary]'`") from exc
        return PgEventStore(str(location))
    if scheme:
        raise ValueError(f"event store {redacted(location)}: unknown scheme {scheme!r}; give a "
                         "postgresql://user@host:port/db URL or the path of a SQLite file")
    return EventStore(location)


def redacted(location: str | os.PathLike[str]) -> str:
    """``location`` fit for a log line: a URL's password (``user:pw@`` or ``?password=``) becomes ``***``."""
    text = str(location)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is not None:
        user_info, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user_info.partition(':')[0]}:***@{host}")
    query = [(name, "***" if name == "password" else value)
             for name, value in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def _validate(position: int, event: Event) -> None:
    """Reject what would poison training data: blank ids or type, a bad timestamp, a non-finite weight."""
    problem = None
    if not str(event.user_id).strip():
        problem = "user_id is empty"
    elif not str(event.item_id).strip():
        problem = "item_id is empty"
    elif not str(event.event).strip():
        problem = "event type is empty"
    elif event.event_id is not None and not str(event.event_id).strip():
        problem = "event_id is empty (omit it instead)"
    elif any("\x00" in str(text) for text in (event.user_id, event.item_id, event.event, event.event_id or "")):
        problem = "a text field contains a NUL character"  # PostgreSQL's text cannot hold one
    elif event.timestamp is not None and not _is_unix_seconds(event.timestamp):
        problem = f"timestamp {event.timestamp!r} is not a non-negative integer of unix seconds"
    elif not _is_finite_number(event.weight):
        problem = f"weight {event.weight!r} is not a finite number"
    if problem:
        raise InvalidEvent(
            f"event {position} in the batch is invalid ({problem}); nothing from the batch was stored"
        )


# numbers.* rather than int/float so numpy scalars (e.g. from a DataFrame) are accepted; bool is excluded
# because True as a timestamp or weight is a caller bug, not a value.
def _is_unix_seconds(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validated_rows(events: Sequence[Event]) -> list[tuple]:
    """The batch as table rows (both backends' column order), or `InvalidEvent` naming the first bad one."""
    for position, event in enumerate(events):
        _validate(position, event)
    now = time.time()
    return [_row(event, now) for event in events]


def _row(event: Event, now: float) -> tuple:
    timestamp = int(now) if event.timestamp is None else int(event.timestamp)
    event_id = None if event.event_id is None else str(event.event_id)
    return (str(event.user_id), str(event.item_id), str(event.event), timestamp, float(event.weight), now, event_id)


def events_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """``(id, *COLUMNS)`` rows as `EventStore.to_frame` returns them: indexed by id, fixed dtypes."""
    frame = pd.DataFrame.from_records(rows, columns=["id", *COLUMNS])
    return frame.astype(_DTYPES).set_index("id")


class OneConnectionPerProcess:
    """What both stores share: one connection per process, opened on first use (`_open`) and used
    under a lock, dropped without closing in a child after fork(), and a context manager."""

    def __init__(self) -> None:
        self._conn = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __enter__(self):
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's connection; a later call reopens it."""
        self._forget_parent_connection()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    @contextmanager
    def _locked(self) -> Iterator:
        self._forget_parent_connection()
        with self._lock:
            yield self._connection()

    def _forget_parent_connection(self) -> None:
        # Connections must not cross fork(): a child that inherited this store drops the parent's
        # connection and lock without touching them (closing could disturb the parent's SQLite file
        # locks or talk over its PostgreSQL socket) and opens its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._conn = None
            self._lock = threading.Lock()

    def _connection(self):
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def append(self, events: Sequence[Event]) -> int:
        """Store a batch in one transaction: either every event is durable or none is.

        Returns how many were stored now: an event whose ``event_id`` is already stored (by an
        earlier batch or earlier in this one) is skipped, so ``len(events) - stored`` are duplicates.
        """
        rows = validated_rows(events)
        if not rows:
            return 0
        return self._append_rows(rows)

    def _append_rows(self, rows: list[tuple]) -> int:
        raise NotImplementedError

    def _open(self):
        raise NotImplementedError


class EventStore(OneConnectionPerProcess):
    """Append-only event log in one SQLite file, safe across threads and processes.

    Rows get an increasing ``id``; :meth:`to_frame` returns it as the frame's index, so a reader
    can resume with ``to_frame(since_id=frame.index.max())``: writers are serialised (one
    ``BEGIN IMMEDIATE`` at a time), so ids are committed in order and a later commit never
    carries a smaller id than one a reader has already seen.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        super().__init__()
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as conn:
            self._create_or_migrate(conn)

    def _append_rows(self, rows: list[tuple]) -> int:
        """One transaction for validated rows (`OneConnectionPerProcess.append`)."""
        with self._locked() as conn:
            # IMMEDIATE takes the write lock up front, so concurrent writers queue on
            # busy_timeout rather than failing when a read lock cannot be upgraded.
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._insert(conn, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        log.debug("stored %d of %d events in %s", stored, len(rows), self.path)
        return stored

    def _insert(self, conn: sqlite3.Connection, rows: list[tuple]) -> int:
        # executemany sums each row's changes: 0 for a row whose event_id was already stored.
        return conn.executemany(_INSERT, rows).rowcount

    def count(self) -> int:
        with self._locked() as conn:
            return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def to_frame(self, since_id: int = 0, limit: int | None = None) -> pd.DataFrame:
        """Events with ``id > since_id`` in insertion order (the first ``limit``), indexed by ``id``."""
        with self._locked() as conn:
            rows = conn.execute(_SELECT_SINCE, (since_id, -1 if limit is None else limit)).fetchall()
        return events_frame(rows)

    def _create_or_migrate(self, conn: sqlite3.Connection) -> None:
        """Create the table, or add ``event_id`` to a file written before it existed.

        In one write transaction, so workers opening an old file at the same time migrate it once.
        A server of the previous version can still append to a migrated file (its rows have no id).
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
            if "event_id" not in columns:
                conn.execute(f"ALTER TABLE events ADD COLUMN {_EVENT_ID_COLUMN}")
                log.info("event store %s: added the event_id column (idempotent retries)", self.path)
            conn.execute(_EVENT_ID_INDEX)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _open(self) -> sqlite3.Connection:
        is_new = not self.path.exists()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in append).
        # check_same_thread=False is safe because every use holds self._lock.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            conn.close()
            raise OSError(
                f"could not put event store {self.path} in WAL mode (got {mode!r}): "
                "put it on a local filesystem, not a network share"
            )
        conn.execute("PRAGMA synchronous = FULL")
        if is_new:
            _fsync_dir(self.path.parent)
            log.info("created event store %s", self.path)
        return conn


def _fsync_dir(path: Path) -> None:
    # A new database file is durable only once its directory entry is.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
