"""One request's inputs, built the way evaluation builds them: history rows and context.

Evaluation (`recsys.pipeline.ranker_features.request_context` over a split), the backtest and
the server hand the pipeline the same things for a user: their history rows (seen set + the
``MAX_RECENT`` most recent items, oldest first), the request time (``TIMESTAMP``), the time of
their latest interaction (``LAST_TIMESTAMP``, -1 when none) and the dataset's context columns.
The server's requests are built here, from the bundle's stored state or from a history the
caller supplies, so that a request sent with the evaluation's history and time gets the
evaluation's answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.history import History, stack_csr


class RequestError(ValueError):
    """A request value the bundle cannot use (a 422 at the HTTP edge)."""


def request_time(value: float | str | None, real_time: bool) -> float | None:
    """A request or event time in the log's own unit: a number as is; ISO-8601 only for a log in
    real time (unix seconds), where it is converted; None stays None."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    text = value.strip()
    if not text:
        raise RequestError("time: empty; send a number (or omit it)")
    try:
        return float(text)
    except ValueError:
        pass
    if not real_time:
        raise RequestError(f"time {value!r}: this bundle's log uses its own time unit (not real time); "
                           "send the raw number")
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise RequestError(f"time {value!r}: expected unix seconds or ISO-8601") from None
    if stamp is pd.NaT:
        raise RequestError(f"time {value!r}: not a time")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())


def supplied_rows(items: Sequence[int], n_items: int, width: int) -> History:
    """One history row from item indices a caller sent (oldest first; unknown items already dropped)."""
    items = np.asarray(items, dtype=np.int64)
    unique = np.unique(items)
    seen = sp.csr_matrix((np.ones(len(unique), np.float32), (np.zeros(len(unique), np.int64), unique)),
                         shape=(1, n_items))
    recent = np.full((1, width), -1, dtype=np.int32)
    latest = items[-width:]
    recent[0, width - len(latest):] = latest
    return History(seen, recent)


def stack_rows(rows: Sequence[History]) -> History:
    """Several requests' history rows as one batch; ``recent`` left-padded with -1 to the widest
    (every reader of ``recent`` treats -1 as no item, so padding changes no answer)."""
    if len(rows) == 1:
        return rows[0]
    width = max(part.recent.shape[1] for part in rows)
    recent = np.full((sum(len(part.recent) for part in rows), width), -1, dtype=np.int32)
    start = 0
    for part in rows:
        recent[start:start + len(part.recent), width - part.recent.shape[1]:] = part.recent
        start += len(part.recent)
    return History(stack_csr([part.seen for part in rows]), recent)
