"""The one contract every model answers: ``recommend(users, k, history, exclude_seen)``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp

from recsys.data.history import History, as_seen
from recsys.pipeline.topk import mask_rows, topk_from_scores

SCORE_BATCH = 1024


class ModelSpecError(ValueError):
    """A model argument or directory names nothing we can load; the message says what to do."""


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
