"""Backtest, "quality as deployed" (PROTOCOL.md): score a bundle on events that happened after it was built.

Each later event is a request at its own time. Its history is the bundle's stored history of that
user plus the user's earlier later-events (canonical order: time, then file row); the request is
ranked over the full catalogue with that history excluded, and the event's item is the target, so
`topk_metrics` gives the protocol's numbers. Users the bundle never saw start from an empty
history and fold in their own later events; items it never saw can never be hit.

Requests are answered step by step (every user's first later event, then every user's second, ...)
so a batch never holds two requests of one user, and a log of each user's next event (the
protocol's test rows) is answered in exactly the batches evaluation uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.history import History
from recsys.data.idmap import IdMap
from recsys.data.loaders import load_log
from recsys.data.schema import ITEM, TIME, USER, DataError
from recsys.evaluate.metrics import topk_metrics
from recsys.evaluate.models import MODEL_STAGES
from recsys.evaluate.scoring import TOPK
from recsys.pipeline.contract import ModelSpecError
from recsys.pipeline.ranker_features import LAST_TIMESTAMP, TIMESTAMP
from recsys.pipeline.recommend import Pipeline, append_items, request_rows
from recsys.split import Split

if TYPE_CHECKING:
    from recsys.pipeline.served import ServingModel

log = logging.getLogger(__name__)


@dataclass
class LaterEvents:
    """A later log mapped into a bundle's index space, aligned with the file's rows."""

    users: np.ndarray  # int64 bundle user index, -1 = unknown to the bundle
    items: np.ndarray  # int64 bundle item index, n_items = unknown (a target no list can hold)
    times: np.ndarray  # int64
    keys: np.ndarray  # int64 0..users-1, one per distinct user: known users by index, unknown ones after
    context: dict[str, np.ndarray] = field(default_factory=dict)  # float64 context columns

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Backtest:
    """Metrics over every later event, each event's top-K list, and what the bundle did not know."""

    metrics: dict
    topk: np.ndarray  # [events, TOPK] item indices (-1 = empty slot), aligned with the log's rows
    fallback: np.ndarray  # [events] bool: answered from popularity (no history at all)
    counts: dict


class _UserState:
    """What each user has done since the bundle was built: folded-in items and the latest time."""

    def __init__(self, events: LaterEvents, last_time: np.ndarray | None):
        n_keys = int(events.keys.max()) + 1 if len(events) else 0
        self.folded: list[list[int]] = [[] for _ in range(n_keys)]
        self.last_time = np.full(n_keys, -1, dtype=np.int64)
        if last_time is not None:
            known = events.users >= 0
            self.last_time[events.keys[known]] = np.asarray(last_time, dtype=np.int64)[events.users[known]]

    def rows(self, history: History, users: np.ndarray, keys: np.ndarray, n_items: int) -> History:
        rows = request_rows(history, users, n_items, history.recent.shape[1])
        return append_items(rows, [self.folded[key] for key in keys])

    def fold_in(self, keys: np.ndarray, items: np.ndarray, times: np.ndarray, addable: np.ndarray) -> None:
        """Record a step's events; only ``addable`` items (known, not yet in the history) join the
        history, so it stays a set of first occurrences as the protocol's de-duplication keeps it."""
        for key, item, add in zip(keys.tolist(), items.tolist(), addable.tolist(), strict=True):
            if add:
                self.folded[key].append(item)
        np.maximum.at(self.last_time, keys, times)


def split_rows_as_log(split: Split, frame: pd.DataFrame, context: bool = True) -> pd.DataFrame:
    """Rows of a split (index space) as a later log: external ids, timestamps and, unless
    ``context`` is False, the dataset's context columns."""
    log_frame = pd.DataFrame({USER: split.users.to_external(frame["u"].to_numpy()),
                              ITEM: split.items.to_external(frame["i"].to_numpy()),
                              TIME: frame["t"].to_numpy(np.int64)})
    for column in split.context_columns if context else ():
        log_frame[column] = frame[column].to_numpy()
    return log_frame


def read_later_events(path: str | Path) -> pd.DataFrame:
    """The later log, validated and normalised like any interaction log (ids, timestamps)."""
    frame, _, _ = load_log(path)
    return frame


def map_events(frame: pd.DataFrame, users: IdMap, items: IdMap, context_columns: tuple[str, ...] = (),
               source: str = "<events>") -> LaterEvents:
    """External ids -> the bundle's indices (coerced as its id maps coerce request ids)."""
    user_idx = users.to_index(frame[USER].to_numpy(), missing=-1).astype(np.int64)
    item_idx = items.to_index(frame[ITEM].to_numpy(), missing=-1).astype(np.int64)
    item_idx[item_idx < 0] = len(items)  # never -1: that is the top-K lists' padding
    keys = user_idx.copy()
    unknown = user_idx < 0
    if unknown.any():  # numbered in order of appearance, after the known users
        codes, _ = pd.factorize(frame[USER].to_numpy()[unknown])
        keys[unknown] = len(users) + codes
    _, keys = np.unique(keys, return_inverse=True)  # dense, same order: per-user state stays small
    return LaterEvents(user_idx, item_idx, frame[TIME].to_numpy(np.int64), keys.astype(np.int64),
                       context_arrays(frame, context_columns, source))


def context_arrays(frame: pd.DataFrame, names: tuple[str, ...], source: str) -> dict[str, np.ndarray]:
    """The log's context columns the ranker reads, as float64 (NaN stays: the features' missing value)."""
    missing = [name for name in names if name not in frame.columns]
    if missing:
        log.warning("%s has no %s column(s) the ranker reads; those features get their missing value", source,
                    ", ".join(missing))
    out = {}
    for name in names:
        if name not in frame.columns:
            continue
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = (values.isna() & frame[name].notna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(source, "context values must be numbers", name,
                            f"row {row + 1}: {frame.iloc[row].to_dict()}")
        out[name] = values.to_numpy(np.float64)
    return out


def canonical_steps(events: LaterEvents) -> tuple[np.ndarray, np.ndarray]:
    """Rows in canonical order (user, time, file row) and each row's step: 0 for a user's first later event."""
    order = np.lexsort((np.arange(len(events)), events.times, events.keys))
    keys = events.keys[order]
    starts = np.concatenate(([True], keys[1:] != keys[:-1])) if len(keys) else np.zeros(0, bool)
    position = np.arange(len(keys))
    step = position - np.maximum.accumulate(np.where(starts, position, 0))
    return order, step


def step_context(events: LaterEvents, rows: np.ndarray, state: _UserState) -> dict[str, np.ndarray]:
    """The context evaluation gives a request (`recsys.pipeline.ranker_features.request_context`):
    the event's time, the user's latest earlier time, and the log's context columns."""
    context = {TIMESTAMP: events.times[rows], LAST_TIMESTAMP: state.last_time[events.keys[rows]].copy()}
    for name, values in events.context.items():
        context[name] = values[rows]
    return context


def _already_seen(seen: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """Per row, whether its target item is in that row's history (a repeat: never a hit, seen excluded)."""
    inside = items < seen.shape[1]
    found = np.zeros(len(items), dtype=bool)
    if inside.any():
        rows = np.flatnonzero(inside)
        found[rows] = np.asarray(seen[rows, items[rows]]).ravel() > 0
    return found


def replay(pipeline: Pipeline, history: History, events: LaterEvents, last_time: np.ndarray | None,
           n_candidates: int, k: int = TOPK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k lists, popularity-fallback flags and repeat flags for every event (aligned with its rows)."""
    topk = np.full((len(events), k), -1, dtype=np.int64)
    fallback = np.zeros(len(events), dtype=bool)
    repeat = np.zeros(len(events), dtype=bool)
    state = _UserState(events, last_time)
    order, step = canonical_steps(events)
    n_steps = int(step.max()) + 1 if len(step) else 0
    for j in range(n_steps):
        batch_rows = order[step == j]
        for start in range(0, len(batch_rows), pipeline.batch_size):
            rows = batch_rows[start:start + pipeline.batch_size]
            users, keys, items = events.users[rows], events.keys[rows], events.items[rows]
            history_rows = state.rows(history, users, keys, pipeline.n_items)
            topk[rows], _, fallback[rows] = pipeline.recommend_rows(
                users, history_rows, k, exclude_seen=True, exclude=None, n_candidates=n_candidates,
                context=step_context(events, rows, state))
            repeat[rows] = _already_seen(history_rows.seen, items)
            state.fold_in(keys, items, events.times[rows], (items < pipeline.n_items) & ~repeat[rows])
    return topk, fallback, repeat


def event_counts(events: LaterEvents, n_items: int, cutoff: int | None, last_time: np.ndarray | None,
                 repeat: np.ndarray, fallback: np.ndarray) -> dict:
    """What the log held that the bundle could not know or may already know. An event may be
    known when it is earlier than its user's last interaction in the bundle (a tie is not: logs
    such as ml-100k hold many same-second events), or, for a bundle from before last times
    were stored, no later than its cutoff."""
    unknown_user = events.users < 0
    unknown_item = events.items >= n_items
    early = np.zeros(len(events), dtype=bool)
    if last_time is not None and len(last_time) and (np.asarray(last_time) >= 0).any():
        known = ~unknown_user
        early[known] = events.times[known] < np.asarray(last_time)[events.users[known]]
    elif cutoff is not None:
        early = events.times <= cutoff
    return {
        "events": int(len(events)),
        "users": int(np.unique(events.keys).size),
        "unknown_users": int(np.unique(events.keys[unknown_user]).size),
        "unknown_user_events": int(unknown_user.sum()),
        "unknown_item_events": int(unknown_item.sum()),
        "repeat_events": int(repeat.sum()),
        "popular_fallback_events": int(fallback.sum()),
        "cutoff": cutoff,
        "at_or_before_cutoff": int(early.sum()),
    }


def backtest(served: ServingModel, later: pd.DataFrame, stage: str = "full", source: str = "<events>") -> Backtest:
    """Score a loaded bundle (`recsys.bundle.load.load_serving_model`) on a validated later log."""
    if stage not in MODEL_STAGES:
        raise ValueError(f"stage must be one of {MODEL_STAGES}, got {stage!r}")
    pipeline = served.recommender().pipeline
    if stage == "retrieval":
        pipeline.score_candidates = None
    content = served.content
    columns = pipeline.feature_tables.context_columns if pipeline.has_ranker else ()
    events = map_events(later, content.users, content.items, tuple(columns), source)
    if len(content.last_time) and (content.last_time < 0).all():  # a bundle from before they were stored
        log.warning("bundle %s stores no last interaction times; requests get last_timestamp -1", served.version)
    n_candidates = int(served.runtime.get("n_candidates", 200))
    topk, fallback, repeat = replay(pipeline, content.history, events, content.last_time, n_candidates)
    cutoff = (served.runtime.get("data") or {}).get("cutoff")
    counts = event_counts(events, pipeline.n_items, cutoff, content.last_time, repeat, fallback)
    _log_counts(counts, source)
    metrics = topk_metrics(topk, events.items, pipeline.n_items)
    return Backtest({**metrics, **counts}, topk, fallback, counts)


def _log_counts(counts: dict, source: str) -> None:
    if counts["at_or_before_cutoff"]:
        log.warning("%d of %d events in %s are before their user's last interaction in the bundle "
                    "(data cutoff %s): the bundle may already know them (scored anyway)",
                    counts["at_or_before_cutoff"], counts["events"], source, counts["cutoff"])
    if counts["unknown_users"]:
        log.info("%d users (%d events) are unknown to the bundle: they start from an empty history",
                 counts["unknown_users"], counts["unknown_user_events"])
    if counts["repeat_events"]:
        log.info("%d events are of items already in the user's history: misses, as seen items are excluded",
                 counts["repeat_events"])
    if counts["unknown_item_events"]:
        log.info("%d events are of items unknown to the bundle: counted as misses", counts["unknown_item_events"])


def check_bundle_path(path: str | Path) -> Path:
    from recsys.bundle.load import is_bundle
    from recsys.bundle.manifest import MANIFEST_NAME

    path = Path(path)
    if not path.is_dir() or not is_bundle(path):
        raise ModelSpecError(f"--events scores a bundle: --model must be a bundle directory (with {MANIFEST_NAME}) "
                             f"or a bundles root, got {str(path)!r}")
    return path


def load_bundle(path: str | Path) -> ServingModel:
    """A bundle directory for the backtest, or a ModelSpecError saying what was given instead."""
    from recsys.bundle.load import load_serving_model
    from recsys.bundle.manifest import BundleError

    path = check_bundle_path(path)
    try:
        return load_serving_model(path, precompute_users=False)
    except BundleError as exc:
        raise ModelSpecError(f"cannot load bundle {path}: {exc}") from None


def run_backtest(model: str | Path, events_path: str | Path, stage: str = "full") -> tuple[str, Backtest]:
    """Load a bundle and a later log, backtest; returns the result's label and the result."""
    check_bundle_path(model)
    later = read_later_events(events_path)  # before the models load: a bad file fails fast
    served = load_bundle(model)
    result = backtest(served, later, stage, str(events_path))
    label = (f"backtest bundle {served.manifest.kind} {served.version} on {Path(events_path).name} "
             f"({result.counts['events']} events)")
    return label, result
