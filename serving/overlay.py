"""Real-time history: events accepted since the served bundle was built, on top of its histories.

Every worker process keeps its own `HistoryOverlay`, fed from the one event store all workers
write to (`OverlayFeeder` polls it every ``overlay_poll_s``; the worker that accepted an event
catches up before answering 202), so an event reaches the next answer of every worker within
one poll interval. The overlay belongs to the served bundle (`LiveModel`): a reload builds the
new bundle's overlay by replaying the store's events after that bundle's data cutoff before the
swap, so no user loses events on a publish, and events the new bundle was built from are not
counted twice.

Bounded: at most ``max_users`` users (the least recently active go first) and
``max_events`` events per user (the oldest go first).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable

import pandas as pd

from recsys.data.events import EventLog

log = logging.getLogger(__name__)

REPLAY_CHUNK = 50_000  # events read per query when replaying the store


class HistoryOverlay:
    """Per user (external id): ``(item_id, timestamp)`` of their events after ``cutoff``, oldest first."""

    def __init__(self, cutoff: int | None, max_users: int, max_events: int):
        self.cutoff = cutoff
        self.max_users = max_users
        self.max_events = max_events
        self.last_id = 0  # the store's id of the last event read
        self.evicted_users = 0
        self.n_events = 0  # kept as events come and go: metrics read it on every poll
        self._users: OrderedDict[str, deque[tuple[str, int]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, frame: pd.DataFrame) -> int:
        """Add events (an `EventLog.to_frame` frame, indexed by id); returns how many were kept."""
        if frame.empty:
            return 0
        kept = frame if self.cutoff is None else frame[frame["timestamp"] > self.cutoff]
        with self._lock:
            for user, item, stamp in zip(kept["user_id"].tolist(), kept["item_id"].tolist(),
                                         kept["timestamp"].tolist(), strict=True):
                self._append(str(user), str(item), int(stamp))
            self.last_id = max(self.last_id, int(frame.index.max()))
        return len(kept)

    def _append(self, user: str, item: str, stamp: int) -> None:
        events = self._users.get(user)
        if events is None:
            if len(self._users) >= self.max_users:
                _, dropped = self._users.popitem(last=False)
                self.n_events -= len(dropped)
                self.evicted_users += 1
            events = self._users[user] = deque(maxlen=self.max_events)
        else:
            self._users.move_to_end(user)
        self.n_events += len(events) < self.max_events  # a full deque drops its oldest
        events.append((item, stamp))

    def events(self, user: str) -> list[tuple[str, int]]:
        """The user's overlay events, oldest first (empty when none)."""
        events = self._users.get(user)
        return list(events) if events else []

    @property
    def n_users(self) -> int:
        return len(self._users)

    def catch_up(self, store: EventLog, chunk: int = REPLAY_CHUNK) -> int:
        """Read every event stored after ``last_id``; returns how many were read. Both stores commit ids in
        order (`recsys.data.events_pg` says how), so resuming after the last id read never skips one."""
        read = 0
        while True:
            frame = store.to_frame(since_id=self.last_id, limit=chunk)
            self.add(frame)
            read += len(frame)
            if len(frame) < chunk:
                return read


class OverlayFeeder:
    """A daemon thread that keeps the served bundle's overlay caught up with the event store."""

    def __init__(self, overlay: Callable[[], HistoryOverlay | None], store: EventLog, interval_s: float,
                 on_poll: Callable[[HistoryOverlay], None] | None = None):
        self.overlay = overlay
        self.store = store
        self.interval_s = interval_s
        self.on_poll = on_poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="overlay-feeder", daemon=True)
        self._poll_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> None:
        """Catch the current overlay up now (the accepting worker calls this before its 202)."""
        overlay = self.overlay()
        if overlay is None:
            return
        with self._poll_lock:  # one reader at a time: last_id advances once per event
            overlay.catch_up(self.store)
        if self.on_poll is not None:
            self.on_poll(overlay)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a transient store error must not stop real-time history for good
                log.exception("overlay feeder: reading the event store failed; retrying")
