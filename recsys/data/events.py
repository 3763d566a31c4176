"""Durable store for feedback events: the server appends them, the next retrain reads them.

SQLite in WAL mode with ``synchronous=FULL``: once :meth:`EventStore.append` returns, the batch
is on disk and survives the process being killed. Several server worker processes may append
to the same file concurrently; SQLite serialises the writers and ``busy_timeout`` makes each
one wait its turn instead of failing.
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

import pandas as pd

log = logging.getLogger(__name__)

COLUMNS = ["user_id", "item_id", "timestamp", "event", "weight"]
DEFAULT_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT    NOT NULL CHECK (length(user_id) > 0),
    item_id     TEXT    NOT NULL CHECK (length(item_id) > 0),
    event       TEXT    NOT NULL CHECK (length(event) > 0),
    timestamp   INTEGER NOT NULL,
    weight      REAL    NOT NULL,
    received_at REAL    NOT NULL
)
"""
_INSERT = (
    "INSERT INTO events (user_id, item_id, event, timestamp, weight, received_at) VALUES (?, ?, ?, ?, ?, ?)"
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


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    event: str = "interaction"
    timestamp: int | None = None  # unix seconds; None means "when it was appended"
    weight: float = 1.0


def _validate(position: int, event: Event) -> None:
    """Reject what would poison training data: blank ids or type, a bad timestamp, a non-finite weight."""
    problem = None
    if not str(event.user_id).strip():
        problem = "user_id is empty"
    elif not str(event.item_id).strip():
        problem = "item_id is empty"
    elif not str(event.event).strip():
        problem = "event type is empty"
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


def _row(event: Event, now: float) -> tuple:
    timestamp = int(now) if event.timestamp is None else int(event.timestamp)
    return (str(event.user_id), str(event.item_id), str(event.event), timestamp, float(event.weight), now)


class EventStore:
    """Append-only event log in one SQLite file, safe across threads and processes.

    Rows get an increasing ``id``; :meth:`to_frame` returns it as the frame's index, so a reader
    can resume with ``to_frame(since_id=frame.index.max())``.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as conn:
            conn.execute(_SCHEMA)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def append(self, events: Sequence[Event]) -> int:
        """Store a batch in one transaction: either every event is durable or none is."""
        for position, event in enumerate(events):
            _validate(position, event)
        if not events:
            return 0
        now = time.time()
        rows = [_row(event, now) for event in events]
        with self._locked() as conn:
            # IMMEDIATE takes the write lock up front, so concurrent writers queue on
            # busy_timeout rather than failing when a read lock cannot be upgraded.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        log.debug("stored %d events in %s", len(rows), self.path)
        return len(rows)

    def count(self) -> int:
        with self._locked() as conn:
            return conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def to_frame(self, since_id: int = 0, limit: int | None = None) -> pd.DataFrame:
        """Events with ``id > since_id`` in insertion order (the first ``limit``), indexed by ``id``."""
        with self._locked() as conn:
            rows = conn.execute(_SELECT_SINCE, (since_id, -1 if limit is None else limit)).fetchall()
        frame = pd.DataFrame.from_records(rows, columns=["id", *COLUMNS])
        frame = frame.astype(_DTYPES)
        return frame.set_index("id")

    def close(self) -> None:
        """Close this process's connection; a later call reopens it."""
        self._forget_parent_connection()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        self._forget_parent_connection()
        with self._lock:
            yield self._connection()

    def _forget_parent_connection(self) -> None:
        # SQLite connections must not cross fork(): a child that inherited this store drops the
        # parent's connection and lock without touching them (closing could disturb the
        # parent's file locks) and opens its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._conn = None
            self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

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
