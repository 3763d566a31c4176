"""The one contract every model answers: ``recommend(users, k, history, exclude_seen)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SCORE_BATCH = 1024
SORT_WIDTH = 512  # rows this narrow are sorted whole: one call, cheaper than partition + tie fix-up


def topk_from_scores(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k (descending score, ties by lower index); -inf entries become id -1.

    Always k columns: a catalog smaller than k is padded with id -1 and score -inf."""
    if k > scores.shape[1]:
        pad = np.full((scores.shape[0], k - scores.shape[1]), -np.inf, dtype=scores.dtype)
        scores = np.hstack([scores, pad])
    if scores.shape[1] <= SORT_WIDTH:
        # A stable sort of the negated scores keeps equal scores in index order.
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = scores[np.arange(len(scores))[:, None], ids]  # take_along_axis costs more on one row
    else:
        part = _top_k_columns(scores, k)
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        ids = np.take_along_axis(part, order, axis=1)
        top = np.take_along_axis(part_scores, order, axis=1)
    ids = np.where(np.isneginf(top), -1, ids)
    return ids, top


def _top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, k] columns of each row's k best scores, ties at the cut taken by lower index.

    argpartition alone leaves the cut's ties to the sort kernel, which differs across numpy
    builds (SIMD dispatch), so results would depend on the machine."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    cut = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    above = scores > cut
    tied = scores == cut
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    for row in np.flatnonzero(chosen.sum(axis=1) != k):  # NaN in the row: argpartition's pick stands
        chosen[row] = False
        chosen[row, part[row]] = True
    return np.nonzero(chosen)[1].reshape(len(scores), k)


def mask_rows(scores: np.ndarray, rows: sp.csr_matrix) -> None:
    """Set the items present in each row of ``rows`` to -inf, in place."""
    coo = rows.tocoo()
    scores[coo.row, coo.col] = -np.inf


class ModelSpecError(ValueError):
    """A model argument or directory names nothing we can load; the message says what to do."""


@dataclass
class History:
    """What a model knows about users: the seen set and the most recent items in time order."""

    seen: sp.csr_matrix
    recent: np.ndarray  # [users, max_len] item indices, most recent last, left-padded with -1

    def rows(self, users: np.ndarray) -> History:
        return History(csr_rows(self.seen, users), self.recent[users])


def csr_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """``matrix[rows]`` for an int array of rows, gathered directly: scipy's fancy indexing costs
    ~100 µs of checks per call, most of a single request's filtering time."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, stops = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = stops - starts
    indptr = np.zeros(len(rows) + 1, dtype=matrix.indptr.dtype)
    np.cumsum(lengths, out=indptr[1:])
    if len(rows) == 1:
        picked = slice(int(starts[0]), int(stops[0]))
    else:
        picked = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return sp.csr_matrix((matrix.data[picked], matrix.indices[picked], indptr),
                         shape=(len(rows), matrix.shape[1]), copy=False)


def as_seen(history: History | sp.csr_matrix) -> sp.csr_matrix:
    return history.seen if isinstance(history, History) else history


class Recommender(ABC):
    """Scores every item for a batch of users; subclasses implement ``score`` (dense) or override
    ``recommend`` (e.g. an ANN index)."""

    name = "model"

    @abstractmethod
    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """[len(users), n_items] scores given each user's history rows (aligned with ``users``)."""

    def recommend(self, users: np.ndarray, k: int, history: History | sp.csr_matrix, exclude_seen: bool = True,
                  exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores for ``users`` (indices into ``history``'s rows)."""
        users = np.asarray(users)
        ids, scores = [], []
        for start in range(0, len(users), SCORE_BATCH):
            batch = users[start:start + SCORE_BATCH]
            rows = history.rows(batch) if isinstance(history, History) else history[batch]
            dense = self.score(batch, rows).astype(np.float32, copy=False)
            if exclude_seen:
                mask_rows(dense, as_seen(rows))
            if exclude is not None:
                mask_rows(dense, exclude[start:start + SCORE_BATCH])
            batch_ids, batch_scores = topk_from_scores(dense, k)
            ids.append(batch_ids)
            scores.append(batch_scores)
        return np.vstack(ids), np.vstack(scores)
