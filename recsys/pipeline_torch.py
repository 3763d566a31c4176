"""Torch-backed pipeline stages for a trained model directory.

`load_pipeline(model_dir)` wires the user tower, an exact (or given) FAISS index over the item
tower's vectors, the feature tables and the ranker into a `Pipeline`. Compressed bundles plug
ONNX Runtime stages into the same `Pipeline` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from recsys.index import build_index
from recsys.model_dir import RANKING_FEATURES, TrainedModel, load_trained
from recsys.models.two_tower import TwoTower
from recsys.pipeline import Pipeline
from recsys.ranking_features import FeatureTables
from recsys.recommender import History
from recsys.retrieval import all_item_vectors

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
