"""Retrieval through item vectors: exact matmul or a FAISS index, behind the shared contract."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsys.candidates import drop_seen, history_inputs, search_excluding  # noqa: F401 (re-exported)
from recsys.models.two_tower import TwoTower
from recsys.recommender import History, Recommender, as_seen

USER_BATCH = 512


@torch.no_grad()
def all_item_vectors(model: TwoTower, batch: int = 65_536) -> np.ndarray:
    model.eval()
    n = model.cfg.n_items
    out = [model.item_vectors(torch.arange(s + 1, min(s + batch, n) + 1)).numpy() for s in range(0, n, batch)]
    return np.ascontiguousarray(np.vstack(out), dtype=np.float32)


@torch.no_grad()
def user_vectors(model: TwoTower, users: np.ndarray, recent: np.ndarray) -> np.ndarray:
    model.eval()
    users1, hist1 = history_inputs(users, recent, model.cfg.history_len, model.cfg.n_users)
    out = [model.user_vectors(torch.from_numpy(users1[s:s + USER_BATCH]), torch.from_numpy(hist1[s:s + USER_BATCH]))
           for s in range(0, len(users1), USER_BATCH)]
    return np.vstack([o.numpy() for o in out]) if out else np.zeros((0, model.cfg.dim), np.float32)


class TwoTowerRecommender(Recommender):
    """Scores users' tower vectors against all item vectors (exactly, or through ``index``)."""

    name = "two-tower"

    def __init__(self, model: TwoTower, index=None):
        self.model = model
        self.item_vectors = all_item_vectors(model)
        self.index = index

    def user_vectors_for(self, users: np.ndarray, history: History) -> np.ndarray:
        return user_vectors(self.model, users, history.recent)

    def score(self, users: np.ndarray, history: History) -> np.ndarray:
        return self.user_vectors_for(users, history) @ self.item_vectors.T

    def recommend(self, users, k, history, exclude_seen=True, exclude=None):
        if self.index is None:
            return super().recommend(users, k, history, exclude_seen, exclude)
        users = np.asarray(users)
        ids, scores = [], []
        for start in range(0, len(users), USER_BATCH):
            batch = users[start:start + USER_BATCH]
            rows = history.rows(batch)
            seen = as_seen(rows) if exclude_seen else sp.csr_matrix(as_seen(rows).shape, dtype=np.float32)
            if exclude is not None:
                seen = (seen + exclude[start:start + USER_BATCH]).tocsr()
            batch_ids, batch_scores = search_excluding(self.index, self.user_vectors_for(batch, rows), k, seen)
            ids.append(batch_ids)
            scores.append(batch_scores)
        return np.vstack(ids), np.vstack(scores)
