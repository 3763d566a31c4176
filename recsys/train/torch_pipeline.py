"""Torch-backed models behind the recommend contract, for trained model directories.

`TwoTowerRecommender` scores the towers alone (retrieval);

`load_pipeline(model_dir)` wires the user tower, an exact (or given) FAISS index over the item
tower's vectors, the feature tables and the ranker into a `Pipeline`. Compressed bundles plug
ONNX Runtime stages into the same `Pipeline` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.history import History, as_seen
from recsys.index import build_index
from recsys.models.two_tower import TwoTower
from recsys.pipeline.contract import Recommender
from recsys.pipeline.feature_tables import FeatureTables
from recsys.pipeline.recommend import Pipeline
from recsys.pipeline.retrieve import history_inputs, search_excluding
from recsys.train.model_dir import RANKING_FEATURES, TrainedModel, load_trained

log = logging.getLogger(__name__)


class TorchUserEncoder:
    """(users1, history1) -> user vectors through the two-tower user tower."""

    def __init__(self, towers: TwoTower):
        self.towers = towers.eval()

    @torch.no_grad()
    def __call__(self, users1: np.ndarray, history1: np.ndarray) -> np.ndarray:
        return self.towers.user_vectors(torch.from_numpy(users1), torch.from_numpy(history1)).numpy()


class TorchRankerScorer:
    """(user_vec, item_vec, dense) numpy -> ranker scores numpy, without grad (callers keep it in eval mode)."""

    def __init__(self, ranker: torch.nn.Module):
        self.ranker = ranker.eval()

    @torch.no_grad()
    def __call__(self, user_vec: np.ndarray, item_vec: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return self.ranker(torch.from_numpy(user_vec), torch.from_numpy(item_vec), torch.from_numpy(dense)).numpy()


def popularity_from(tables: FeatureTables | None, n_items: int) -> np.ndarray:
    if tables is None:
        log.warning("no %s in the model dir: unknown users get items in index order", RANKING_FEATURES)
        return np.zeros(n_items, dtype=np.float32)
    return np.expm1(tables.item_log_count).astype(np.float32)


def towers_pipeline(towers: TwoTower, tables: FeatureTables | None, ranker: torch.nn.Module | None = None,
                    index_factory: str = "Flat", **kwargs) -> Pipeline:
    """A pipeline over torch modules (ranker optional); ``kwargs`` go to `Pipeline`."""
    item_vectors = all_item_vectors(towers)
    return Pipeline(encode_users=TorchUserEncoder(towers), index=build_index(item_vectors, index_factory),
                    item_vectors=item_vectors, popularity=popularity_from(tables, len(item_vectors)),
                    history_len=towers.cfg.history_len, n_users=towers.cfg.n_users, feature_tables=tables,
                    score_candidates=None if ranker is None else TorchRankerScorer(ranker), **kwargs)


def load_pipeline(path: Path, history: History | None = None, with_ranker: bool = True,
                  index_factory: str = "Flat") -> Pipeline:
    """The full pipeline of a model directory (``with_ranker=False``: retrieval only)."""
    return pipeline_from_trained(load_trained(path), path, history, with_ranker, index_factory)


def pipeline_from_trained(trained: TrainedModel, path: Path, history: History | None = None,
                          with_ranker: bool = True, index_factory: str = "Flat") -> Pipeline:
    path = Path(path)
    tables = FeatureTables.load(path / RANKING_FEATURES) if (path / RANKING_FEATURES).exists() else None
    ranker = trained.ranker if with_ranker else None
    if with_ranker and ranker is None:
        log.info("%s has no trained ranker: the pipeline returns retrieval order", path)
    return towers_pipeline(trained.towers, tables, ranker, index_factory, users=trained.users, items=trained.items,
                           history=history)


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
