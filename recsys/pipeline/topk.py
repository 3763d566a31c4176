"""Top-k of score rows, the way every model breaks ties (higher score, then lower index)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

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
    part_scores = np.take_along_axis(scores, part, axis=1)
    cut = part_scores.min(axis=1, keepdims=True)
    tied = scores == cut
    if (tied.sum(axis=1) == (part_scores == cut).sum(axis=1)).all():
        return part  # no row has a tie across its cut: the partition is the only possible answer
    above = scores > cut
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
