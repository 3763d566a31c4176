"""What a page browsing a bundle asks of it besides recommendations: why an item may suit a user
(their own history items closest to it in the item space) and the known users by id prefix.

Plain numpy over arrays the bundle already maps; no model pass, so nothing here is batched.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp

from recsys.data.history import History
from recsys.data.idmap import IdMap

# A history longer than this is cut to its most recent items: the similarities cost
# items asked x history x dimension, and the server computes them on its event loop.
MAX_EXPLAIN_HISTORY = 1000


def history_newest_first(rows: History, limit: int = MAX_EXPLAIN_HISTORY) -> np.ndarray:
    """The item indices of a one-row history, most recent first, at most ``limit``.

    Only the ``recent`` window is in time order; the rest of the seen set follows in the stored
    order (the bundle keeps no times for it), so a cut history keeps the newest ``recent`` items
    and an arbitrary part of the older ones."""
    recent = rows.recent[0]
    newest = recent[recent >= 0][::-1].astype(np.int64)
    seen = rows.seen.indices.astype(np.int64)
    older = seen[~np.isin(seen, newest)]
    return np.concatenate([newest, older])[:limit]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    rows = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, np.float32(1e-12))  # a zero vector resembles nothing: score 0


def closest_in_history(item_vectors, items: np.ndarray, history: np.ndarray,
                       n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each item index (-1: unknown, answered with nothing), the ``n`` history items of highest
    cosine similarity to it and those similarities, best first, never the item itself; ties keep
    the history's order (newest first)."""
    nothing = (np.zeros(0, np.int64), np.zeros(0, np.float32))
    known = items[items >= 0]
    if len(history) == 0 or len(known) == 0:
        return [nothing for _ in items]
    # ``item_vectors`` may dequantise on each gather (`DequantizedRows`): gather only these rows.
    similarity = _unit_rows(item_vectors[known]) @ _unit_rows(item_vectors[history]).T
    similarity[known[:, None] == history[None, :]] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :n]
    answers, row = [], 0
    for item in items.tolist():
        if item < 0:
            answers.append(nothing)
            continue
        picked = order[row][np.isfinite(similarity[row, order[row]])]
        answers.append((history[picked], similarity[row, picked]))
        row += 1
    return answers


class UserDirectory:
    """The bundle's users for a user picker: the ones whose id starts with a prefix, in the
    bundle's order, with their stored history length.

    Ids are kept as text in lexicographic order, where the ids starting with a prefix are one
    range (two binary searches, not a scan of every id per request). Built on first use: a few
    dozen bytes per user that a server not asked for users never holds."""

    def __init__(self, users: IdMap, seen: sp.csr_matrix):
        self._users = users
        self._seen = seen

    @cached_property
    def history_lengths(self) -> np.ndarray:
        """[users] how many items each user's stored history holds (the seen set's row lengths)."""
        return np.diff(self._seen.indptr).astype(np.int64)

    @cached_property
    def _text_order(self) -> tuple[np.ndarray, np.ndarray]:
        text = self._users.ids.astype(str)
        order = np.argsort(text, kind="stable")
        return text[order], order

    def ids(self, rows: np.ndarray) -> list[str]:
        return [str(user) for user in self._users.ids[rows].tolist()]

    def matching(self, prefix: str, limit: int) -> tuple[np.ndarray, int]:
        """The first ``limit`` user rows (bundle order) whose id starts with ``prefix``, and how many match."""
        if not prefix:
            total = len(self._users)
            return np.arange(min(limit, total)), total
        text, order = self._text_order
        start = int(np.searchsorted(text, prefix, side="left"))
        after = _after_prefix(prefix)
        stop = len(text) if after is None else start + int(np.searchsorted(text[start:], after, side="left"))
        rows = order[start:stop]
        if len(rows) > limit:
            rows = np.partition(rows, limit - 1)[:limit]
        return np.sort(rows), stop - start


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (code point order, as
    numpy compares them); None when there is none (a prefix of only the largest code point)."""
    stem = prefix.rstrip(chr(0x10FFFF))
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None
