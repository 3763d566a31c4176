"""Teacher -> student distillation for the retrieval towers and the ranker.

Towers: the student learns from the data (the same sampled softmax as the teacher) plus two
teacher signals: KL between the teacher's and the student's in-batch score distributions at a
temperature, and ranking distillation on the teacher's top-K items (Tang & Wang, KDD 2018),
whose position weights make the student care most about the teacher's first few items.

Ranker: the teacher pipeline (its towers, feature tables and ranker) scores every candidate list
the student ranker trains on, as it would score that request at serving time; the student adds
KL to the teacher's list softmax (`recsys.train.ranker.list_distillation_loss`) to its own loss.
The teacher was trained on these interactions, so it is surest about the positives; what it
adds over the labels is the order of the negatives.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from recsys.data.history import History
from recsys.index import build_index, resolve_factory, search, set_query_params
from recsys.models.two_tower import TwoTower
from recsys.pipeline.recommend import Pipeline
from recsys.train.ranker import list_inputs

log = logging.getLogger(__name__)


EXACT_TOPK_ITEMS = 100_000  # above this, the teacher's top-K comes from an IVF index (TEACHER_NPROBE)
TEACHER_NPROBE = 32


def _teacher_item_index(vectors: np.ndarray):
    index = build_index(vectors, resolve_factory("IVF{auto},Flat", len(vectors)))
    set_query_params(index, {"nprobe": TEACHER_NPROBE})
    return index


@dataclass
class TowerDistillConfig:
    kl_weight: float = 1.0
    kl_temperature: float = 2.0
    rank_weight: float = 0.5
    rank_topk: int = 10
    rank_decay: float = 5.0  # position weights exp(-rank / decay)

    @classmethod
    def scaled(cls, weight: float) -> TowerDistillConfig | None:
        """Both teacher signals at ``weight`` x their defaults; None (no distillation) at 0."""
        if weight == 0:
            return None
        default = cls()
        return cls(kl_weight=default.kl_weight * weight, rank_weight=default.rank_weight * weight)

    def to_dict(self) -> dict:
        return asdict(self)


def position_weights(k: int, decay: float) -> torch.Tensor:
    weights = torch.exp(-torch.arange(k, dtype=torch.float32) / decay)
    return weights / weights.sum()


class TowerDistiller:
    """An ``extra_loss`` for `train_two_tower`: the frozen teacher's view of every batch."""

    def __init__(self, teacher: TwoTower, cfg: TowerDistillConfig):
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.cfg = cfg
        with torch.no_grad():
            n = teacher.cfg.n_items
            self.teacher_items = teacher.item_vectors(torch.arange(1, n + 1))
        self.weights = position_weights(cfg.rank_topk, cfg.rank_decay)
        self.index = _teacher_item_index(self.teacher_items.numpy()) if n > EXACT_TOPK_ITEMS else None

    @torch.no_grad()
    def _teacher_view(self, users1, history1, targets):
        # The teacher sees the history, not the user id: its id embeddings memorised each user's
        # whole train sequence, so with them its top-K for an early prefix holds that user's later
        # items, and a student taught to rank those first learned to memorise instead of to follow
        # the sequence (measured on ml-100k: tower distillation cost the student 0.007 NDCG@10 on
        # the gate's events). Teachers train with user-id dropout, so the history-only view is one
        # they know.
        user_vec = self.teacher.user_vectors(torch.zeros_like(users1), history1)
        inbatch = user_vec @ self.teacher_items[targets].T * self.teacher.inv_temperature
        return inbatch, self._teacher_top(user_vec, history1)

    def _teacher_top(self, user_vec: torch.Tensor, history1: torch.Tensor) -> torch.Tensor:
        """The teacher's top-K among items the user has not just interacted with."""
        if self.index is None:
            full = user_vec @ self.teacher_items.T
            full.scatter_(1, history1.clamp_min(1) - 1, -1e4)
            return full.topk(self.cfg.rank_topk, dim=1).indices
        # [B, n_items] scores cost seconds per step at 1M items: ask an IVF index instead.
        _, ids = search(self.index, user_vec.numpy(), self.cfg.rank_topk + history1.shape[1])
        seen = (ids[:, :, None] + 1 == history1.numpy()[:, None, :]).any(-1) | (ids < 0)
        order = np.argsort(seen, axis=1, kind="stable")[:, : self.cfg.rank_topk]
        return torch.from_numpy(np.take_along_axis(ids, order, axis=1).clip(min=0))

    def __call__(self, student: TwoTower, users1, history1, targets, user_vec, item_vec) -> torch.Tensor:
        teacher_logits, teacher_top = self._teacher_view(users1, history1, targets)
        tau = self.cfg.kl_temperature
        student_logits = user_vec @ item_vec.T * student.inv_temperature
        kl = F.kl_div(F.log_softmax(student_logits / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1),
                      log_target=True, reduction="batchmean") * tau * tau
        top_vec = student.item_vectors(teacher_top + 1)  # [B, K, D]
        top_logits = torch.einsum("bd,bkd->bk", user_vec, top_vec) * student.inv_temperature
        logits = torch.cat([top_logits, student_logits], dim=1)
        rank = -(F.log_softmax(logits, dim=1)[:, : self.cfg.rank_topk] * self.weights).sum(1).mean()
        return self.cfg.kl_weight * kl + self.cfg.rank_weight * rank


@dataclass
class RankerDistillConfig:
    weight: float = 1.0
    temperature: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


class ListTeacher:
    """A `recsys.train.ranker.ListTeacher`: the teacher pipeline's ranker logits for given lists."""

    def __init__(self, pipeline: Pipeline, n_candidates: int):
        if pipeline.score_candidates is None:
            raise ValueError("the teacher pipeline has no ranker to distil")
        self.pipeline = pipeline
        self.n_candidates = n_candidates

    def __call__(self, users: np.ndarray, rows: History, listed: np.ndarray, context: dict | None) -> np.ndarray:
        user_vec, vecs, dense, _ = list_inputs(self.pipeline, users, rows, listed, context,
                                               n_candidates=self.n_candidates)
        return np.asarray(self.pipeline.score_candidates(user_vec, vecs, dense), dtype=np.float32)


def topk_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of shared items between two aligned [users, K] top-K lists."""
    shared = [len(np.intersect1d(x[x >= 0], y[y >= 0])) / max(1, (x >= 0).sum()) for x, y in zip(a, b, strict=True)]
    return float(np.mean(shared)) if shared else 0.0
