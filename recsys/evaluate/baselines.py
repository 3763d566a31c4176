"""Popularity, ItemKNN and EASE behind the same contract as the learned models."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from recsys.data.history import as_seen
from recsys.models.ease import L2, ease_weights
from recsys.pipeline.contract import Recommender
from recsys.split import Split

log = logging.getLogger(__name__)


class Popularity(Recommender):
    """Exact train counts; the fallback for unknown users too."""

    name = "pop"

    def fit(self, split: Split) -> Popularity:
        self.counts = np.bincount(split.train["i"].to_numpy(), minlength=split.n_items).astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class RandomScores(Recommender):
    """Uniform random ranking: the floor every model must clear."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, split: Split) -> RandomScores:
        self.n_items = split.n_items
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(users[0]) if len(users) else 0])
        return rng.random((len(users), self.n_items), dtype=np.float32)


class ItemKNN(Recommender):
    """Item-item cosine similarity with shrinkage, top-``neighbours`` kept per item."""

    name = "itemknn"

    def __init__(self, neighbours: int = 100, shrink: float = 0.0):
        self.neighbours = neighbours
        self.shrink = shrink

    def fit(self, split: Split) -> ItemKNN:
        matrix = split.history("valid").astype(np.float32)  # train rows only
        co = (matrix.T @ matrix).toarray()
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        # Keep, for each candidate item, its nearest history items (RecBole's orientation).
        self.similarity = self._keep_neighbours(sim).T.tocsr()
        return self

    def _keep_neighbours(self, sim: np.ndarray) -> sp.csr_matrix:
        k = min(self.neighbours, sim.shape[1] - 1)
        cols = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        rows = np.repeat(np.arange(sim.shape[0]), k)
        values = np.take_along_axis(sim, cols, axis=1).ravel()
        return sp.csr_matrix((values, (rows, cols.ravel())), shape=sim.shape)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return (as_seen(history) @ self.similarity).toarray()


class EASE(Recommender):
    """Embarrassingly shallow autoencoder (Steck 2019): closed-form item-item weights."""

    name = "ease"

    def __init__(self, l2: float = L2):
        self.l2 = l2

    def fit(self, split: Split) -> EASE:
        self.weights = ease_weights(split.history("valid"), self.l2).astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        return np.asarray(as_seen(history) @ self.weights)


BASELINES = {"pop": Popularity, "itemknn": ItemKNN, "ease": EASE, "random": RandomScores}


def fit_baseline(name: str, split: Split) -> Recommender:
    log.info("fitting baseline %s on %d train rows", name, len(split.train))
    return BASELINES[name]().fit(split)
