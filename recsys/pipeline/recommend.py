"""Retrieve -> rank -> filter: the one recommend path evaluation, compression and serving call.

The pipeline is assembled from pluggable stages so it is not tied to torch:

- ``encode_users(users1 int64 [B], history1 int64 [B, L]) -> float32 [B, D]`` (index + 1, 0 = pad
  / unknown user), e.g. the torch user tower or an ONNX session;
- ``index``: a FAISS index over the item vectors (positions = item indices);
- ``item_vectors`` [n_items, D]: the rows fed to the ranker, gathered by item index (an int8
  bundle dequantises each gather: `recsys.bundle.content.DequantizedRows`);
- ``score_candidates(user_vec [B, D], item_vec [B, C, D], dense [B, C, F]) -> [B, C]`` (numpy in
  and out), with ``feature_tables`` for the dense features; ``None`` keeps the retrieval order.

`recsys.pipeline_torch.load_pipeline(model_dir)` wires the torch stages of a trained model
directory; bundles plug in ONNX Runtime stages the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.data.history import History, as_seen, csr_rows
from recsys.data.idmap import IdMap
from recsys.pipeline.contract import Recommender
from recsys.pipeline.feature_tables import FeatureTables
from recsys.pipeline.ranker_features import UserSide, build_features, slice_context
from recsys.pipeline.retrieve import DenseScan, drop_seen, history_inputs, search_excluding
from recsys.pipeline.topk import topk_from_scores

UserEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


CandidateScorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


UserSideSource = Callable[[np.ndarray, History], UserSide | None]


N_CANDIDATES = 200


STAGES = ("user_tower", "ann", "features", "ranker", "total")


class StageClock:
    """Adds each stage's wall time (seconds) into ``timings`` when one is given."""

    def __init__(self, timings: dict | None):
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
            self.last = now


def empty_history(n_rows: int, n_items: int, max_len: int) -> History:
    return History(sp.csr_matrix((n_rows, n_items), dtype=np.float32),
                   np.full((n_rows, max_len), -1, dtype=np.int32))


def request_rows(history: History | None, users: np.ndarray, n_items: int, max_len: int = 50) -> History:
    """``history`` rows for ``users`` (aligned); users outside it (e.g. -1 = unknown) get empty rows."""
    if history is None:
        return empty_history(len(users), n_items, max_len)
    known = (users >= 0) & (users < history.seen.shape[0])
    if known.all():
        return history.rows(users)
    rows = history.rows(np.where(known, users, 0))
    keep = sp.diags(known.astype(np.float32))
    recent = np.where(known[:, None], rows.recent, -1)
    return History((keep @ rows.seen).tocsr(), recent)


def append_items(rows: History, extra: Sequence[Sequence[int]]) -> History:
    """Rows with each user's ``extra`` item indices (oldest first) appended to the history."""
    recent = rows.recent.copy()
    width = recent.shape[1]
    seen_rows, seen_cols = [], []
    for row, items in enumerate(extra):
        items = np.asarray(items, dtype=np.int64)
        if len(items) == 0:
            continue
        merged = np.concatenate([recent[row][recent[row] >= 0], items])[-width:]
        recent[row] = -1
        recent[row, width - len(merged):] = merged
        seen_rows.append(np.full(len(items), row))
        seen_cols.append(items)
    if not seen_rows:
        return rows
    added = sp.csr_matrix((np.ones(sum(map(len, seen_cols)), np.float32),
                           (np.concatenate(seen_rows), np.concatenate(seen_cols))), shape=rows.seen.shape)
    seen = (rows.seen + added).tocsr()
    seen.data[:] = 1.0
    return History(seen, recent)


def items_csr(lists: Sequence[Sequence[int]], n_items: int) -> sp.csr_matrix:
    """One row per list of item indices (negative indices are dropped)."""
    lengths = [len(x) for x in lists]
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if sum(lengths) else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(lists)), lengths)
    keep = cols >= 0
    return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=(len(lists), n_items))


@dataclass
class Pipeline:
    encode_users: UserEncoder
    index: object  # faiss.Index over item vectors
    item_vectors: np.ndarray  # [n_items, D]
    popularity: np.ndarray  # [n_items] fallback scores (train counts)
    history_len: int  # user-tower window
    n_users: int  # known users; other indices are unknown (user id 0 in the tower)
    feature_tables: FeatureTables | None = None
    score_candidates: CandidateScorer | None = None
    users: IdMap | None = None
    items: IdMap | None = None
    history: History | None = None  # stored history of known users, for the external-id API
    batch_size: int = 256
    # (users, their history rows) -> the features' UserSide, or None to compute it (e.g. a cache).
    user_side: UserSideSource | None = None

    def __post_init__(self):
        if self.score_candidates is not None and self.feature_tables is None:
            raise ValueError("a ranker needs feature_tables to build its dense inputs")
        self._popular_order = np.argsort(-self.popularity, kind="stable")
        self._scan = DenseScan.of(self.index)  # small exhaustive indexes: one product per batch

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    @property
    def has_ranker(self) -> bool:
        return self.score_candidates is not None

    def recommend(self, users: np.ndarray, k: int, history: History | None, exclude_seen: bool = True,
                  exclude: sp.csr_matrix | None = None, n_candidates: int = N_CANDIDATES, context: dict | None = None,
                  timings: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k item indices, scores and a popularity-fallback mask for ``users``.

        ``users`` index ``history``'s rows (-1 = unknown user: empty history); ``exclude`` rows
        and ``context`` arrays are aligned with ``users``. Unknown users and users without
        history get popular items (``fallback_mask`` True). ``timings`` (optional) accumulates
        seconds per stage: user_tower, ann, features, ranker, total.
        """
        users = np.asarray(users, dtype=np.int64)
        max_len = history.recent.shape[1] if history is not None else self.history_len
        out_ids, out_scores, out_fallback = [], [], []
        for start in range(0, len(users), self.batch_size):
            stop = start + self.batch_size
            batch = users[start:stop]
            rows = request_rows(history, batch, self.n_items, max_len)
            ids, scores, fallback = self.recommend_rows(
                batch, rows, k, exclude_seen, None if exclude is None else exclude[start:stop], n_candidates,
                slice_context(context, slice(start, stop)), timings)
            out_ids.append(ids)
            out_scores.append(scores)
            out_fallback.append(fallback)
        if not out_ids:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros(0, bool)
        return np.vstack(out_ids), np.vstack(out_scores), np.concatenate(out_fallback)

    def recommend_rows(self, users: np.ndarray, rows: History, k: int, exclude_seen: bool = True,
                       exclude: sp.csr_matrix | None = None, n_candidates: int = N_CANDIDATES,
                       context: dict | None = None, timings: dict | None = None):
        """`recommend` for one batch whose history ``rows`` are already aligned with ``users``."""
        started = time.perf_counter()
        banned = rows.seen if exclude_seen else sp.csr_matrix(rows.seen.shape, dtype=np.float32)
        if exclude is not None:
            banned = (banned + exclude).tocsr()
        # Unknown users arrive with empty rows unless the caller folded in their new items.
        fallback = (np.diff(rows.seen.indptr) == 0) & ~(rows.recent >= 0).any(1)
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        personal = np.flatnonzero(~fallback)
        if len(personal) == len(users):
            part, part_banned = rows, banned
        elif len(personal):
            part = History(csr_rows(rows.seen, personal), rows.recent[personal])
            part_banned = csr_rows(banned, personal)
        if len(personal):
            ids[personal], scores[personal] = self._personal(
                users[personal], part, k, part_banned, n_candidates,
                slice_context(context, personal), StageClock(timings))
        if fallback.any():
            ids[fallback], scores[fallback] = self._popular(k, csr_rows(banned, np.flatnonzero(fallback)))
        if timings is not None:
            timings["total"] = timings.get("total", 0.0) + time.perf_counter() - started
        return ids, scores, fallback

    def retrieve(self, users: np.ndarray, recent: np.ndarray, banned: sp.csr_matrix, n_candidates: int,
                 clock: StageClock | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User vectors [B, D] and the top ``n_candidates`` items not in ``banned`` with their scores."""
        clock = clock or StageClock(None)
        user_vec = self.user_vectors(users, recent)
        clock.lap("user_tower")
        cands, cand_scores = search_excluding(self.index, user_vec, n_candidates, banned, self._scan)
        clock.lap("ann")
        return user_vec, cands, cand_scores

    def user_vectors(self, users: np.ndarray, recent: np.ndarray) -> np.ndarray:
        """[B, D] the user tower's outputs for ``users`` over their recent-item rows."""
        users1, history1 = history_inputs(users, recent, self.history_len, self.n_users)
        return np.ascontiguousarray(self.encode_users(users1, history1), dtype=np.float32)

    def _personal(self, users, rows: History, k, banned, n_candidates, context, clock: StageClock):
        user_vec, cands, cand_scores = self.retrieve(users, rows.recent, banned, max(n_candidates, k), clock)
        if not self.has_ranker:
            return cands[:, :k], cand_scores[:, :k]
        cand_vecs = self.item_vectors[np.maximum(cands, 0)]
        user = self.user_side(users, rows) if self.user_side is not None else None
        dense = build_features(self.feature_tables, rows, cands, cand_scores, cand_vecs, self.item_vectors, context,
                               user=user)
        clock.lap("features")
        ranked = np.asarray(self.score_candidates(user_vec, cand_vecs, dense), dtype=np.float32)
        ranked = np.where(cands >= 0, ranked, -np.inf)
        order, top = topk_from_scores(ranked, k)
        clock.lap("ranker")
        picked = cands[np.arange(len(cands))[:, None], np.maximum(order, 0)]
        return np.where(order >= 0, picked, -1), top

    def _popular(self, k: int, banned: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        extra = int(np.diff(banned.indptr).max()) if banned.shape[0] else 0
        head = self._popular_order[: k + extra]
        ids = np.broadcast_to(head, (banned.shape[0], len(head)))
        return drop_seen(ids, self.popularity[ids].astype(np.float32), banned, k)

    # ------------------------------------------------------------------------------------------
    # External ids

    def recommend_external(self, user_ids, k: int, exclude_seen: bool = True,
                           exclude_items: Sequence[Sequence] | None = None,
                           new_items: Sequence[Sequence] | None = None, n_candidates: int = N_CANDIDATES,
                           context: dict | None = None, timings: dict | None = None):
        """`recommend` in external ids: ``user_ids`` in, item ids out (slots past the catalogue
        hold score -inf). ``exclude_items`` / ``new_items`` are per-user external item ids;
        ``new_items`` (oldest first) extend the stored history, e.g. events since the model was
        built, and let unknown users fold in. Unknown item ids are ignored."""
        if self.users is None or self.items is None:
            raise ValueError("recommend_external needs the pipeline's users and items id maps")
        users = self.users.to_index(np.asarray(user_ids), missing=-1)
        rows = request_rows(self.history, users, self.n_items, self.history_len)
        if new_items is not None:
            rows = append_items(rows, [self._item_indices(items) for items in new_items])
        exclude = None
        if exclude_items is not None:
            exclude = items_csr([self._item_indices(items) for items in exclude_items], self.n_items)
        ids, scores, fallback = self.recommend_rows(users, rows, k, exclude_seen, exclude, n_candidates, context,
                                                    timings)
        external = self.items.to_external(np.maximum(ids, 0))
        if self.items.is_integer:
            external = np.where(ids >= 0, external, -1)
        else:
            external = np.where(ids >= 0, external.astype(object), None)
        return external, scores, fallback

    def _item_indices(self, items) -> np.ndarray:
        if len(items) == 0:
            return np.zeros(0, dtype=np.int64)
        idx = self.items.to_index(np.asarray(items), missing=-1)
        return idx[idx >= 0]


class PipelineRecommender(Recommender):
    """The pipeline behind the shared contract, so `evaluate_model` scores exactly `recommend`."""

    name = "pipeline"
    accepts_context = True  # evaluation passes each held-out request's context

    def __init__(self, pipeline: Pipeline, n_candidates: int = N_CANDIDATES):
        self.pipeline = pipeline
        self.n_candidates = n_candidates

    def score(self, users, history):
        raise NotImplementedError("the pipeline ranks retrieved candidates, not the whole catalogue")

    def recommend(self, users, k, history, exclude_seen=True, exclude=None, context=None):
        if not isinstance(history, History):
            seen = as_seen(history)
            history = History(seen, np.full((seen.shape[0], 1), -1, dtype=np.int32))
        ids, scores, _ = self.pipeline.recommend(users, k, history, exclude_seen, exclude, self.n_candidates, context)
        return ids, scores
