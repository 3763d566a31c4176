"""Dense ranking features per (request, candidate), built from arrays a bundle can carry.

`build_features` is the one builder: training, evaluation and serving call it with the same
`FeatureTables` (item tokens, popularity, co-occurrence neighbours, time-binned item counts),
the users' `History` rows, the candidates with their retrieval scores, and an optional request
context. It is vectorised over the batch and never touches pandas or torch.

Request context (all optional, arrays aligned with the batch rows or scalars):
``timestamp`` is the request time in the log's units, ``last_timestamp`` the user's previous
interaction time, and any dataset context column (Instacart: ``order_dow``,
``order_hour_of_day``, ``days_since_prior_order``). Time-binned item counts are read as of the
start of the request's time bin, so offline features never use interactions after the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsys.data.history import History
from recsys.pipeline.feature_tables import TIME_FEATURES, FeatureTables, item_time_features
from recsys.split import Split

TIMESTAMP = "timestamp"
LAST_TIMESTAMP = "last_timestamp"
RECENT_FOR_OVERLAP = 5  # most recent items whose tokens / vectors the candidate is compared with
RECENT_FOR_COOC = 5
COOC_DECAY = 0.7  # weight of the j-th most recent item's neighbours: decay ** j
TOKEN_MASK_CELLS = 1 << 24  # batch rows * token vocab up to which token lookups use a dense mask


def request_context(split: Split, stage: str) -> dict[str, np.ndarray]:
    """What a request for each held-out user of ``stage`` knows: its time and order context.

    Aligned with ``split.targets(stage)``. The request time is the held-out interaction's time
    (a live request happens when it happens); ``last_timestamp`` is the user's latest history time.
    """
    frame = split.stage_frame(stage)
    users = frame["u"].to_numpy()
    last = split.history_frame(stage).groupby("u")["t"].max()
    context = {TIMESTAMP: frame["t"].to_numpy(np.int64),
               LAST_TIMESTAMP: last.reindex(users).fillna(-1).to_numpy(np.int64)}
    for column in split.context_columns:
        context[column] = frame[column].to_numpy(np.float64)
    return context


def slice_context(context: dict | None, rows: slice | np.ndarray) -> dict | None:
    if context is None:
        return None
    return {name: value[rows] if np.ndim(value) else value for name, value in context.items()}


@dataclass
class UserSide:
    """What the features need from the users' histories alone, for a batch of rows.

    It does not depend on the candidates or the request context, so serving computes it once per
    known user (whose stored history does not change while a bundle is loaded) and reuses it.
    Sorted lookup keys are ``row * n + value`` for the batch's rows, so an instance only fits the
    batch it was built for.
    """

    history_len: np.ndarray  # [B] float64 seen items
    user_pop: np.ndarray  # [B, 1] mean log-popularity of the recent items
    recent_vecs: np.ndarray  # [B, J] x D vectors of the last few items
    recent_valid: np.ndarray  # [B, J] bool
    cooc_keys: np.ndarray  # sorted row * n_items + neighbour item
    cooc_sums: np.ndarray  # decayed neighbour weight per key
    ease_keys: np.ndarray  # sorted row * n_items + item, the EASE neighbours of every seen item
    ease_sums: np.ndarray  # summed EASE weight per key
    affinity_profile: np.ndarray | None  # [B, n_labels] share of recent items carrying each label
    token_keys: np.ndarray | None  # sorted unique row * vocab + token of the last few items


def user_side(tables: FeatureTables, history: History, item_vectors: np.ndarray) -> UserSide:
    """The parts of a feature group that `build_features` will not compute (all of its features
    disabled, e.g. a student without them) are left empty: that is what a student saves per request."""
    recent = history.recent
    recent_valid = recent >= 0
    user_pop = (np.where(recent_valid, tables.item_log_count[np.maximum(recent, 0)], 0.0).sum(1)
                / np.maximum(recent_valid.sum(1), 1))[:, None]
    last = recent[:, -RECENT_FOR_OVERLAP:]
    wanted = tables.wanted_groups
    none = (np.zeros(0, np.int64), np.zeros(0, np.float64))
    keys, sums = _cooccurrence_sums(tables, recent) if wanted["cooc"] else none
    ease_keys, ease_sums = _ease_sums(tables, history.seen) if wanted["ease"] else none
    return UserSide(history_len=np.diff(history.seen.indptr).astype(np.float64), user_pop=user_pop,
                    recent_vecs=item_vectors[np.maximum(last, 0)], recent_valid=last >= 0,
                    cooc_keys=keys, cooc_sums=sums, ease_keys=ease_keys, ease_sums=ease_sums,
                    affinity_profile=_affinity_profile(tables, recent) if wanted["affinity"] else None,
                    token_keys=_token_keys(tables, recent) if wanted["token"] else None)


def stack_user_sides(sides: Sequence[UserSide], tables: FeatureTables) -> UserSide:
    """One batch's `UserSide` from one-row sides (each built for its own row 0): row-keyed lookup
    keys are shifted to their row, so the stack equals `user_side` over the stacked rows."""
    if len(sides) == 1:
        return sides[0]

    def keys(name: str, stride: int) -> np.ndarray:
        return np.concatenate([getattr(side, name) + row * np.int64(stride) for row, side in enumerate(sides)])

    def rows(name: str) -> np.ndarray | None:
        parts = [getattr(side, name) for side in sides]
        return None if parts[0] is None else np.concatenate(parts)

    return UserSide(history_len=rows("history_len"), user_pop=rows("user_pop"), recent_vecs=rows("recent_vecs"),
                    recent_valid=rows("recent_valid"), cooc_keys=keys("cooc_keys", tables.n_items),
                    cooc_sums=rows("cooc_sums"), ease_keys=keys("ease_keys", tables.n_items),
                    ease_sums=rows("ease_sums"), affinity_profile=rows("affinity_profile"),
                    token_keys=None if sides[0].token_keys is None else keys("token_keys", tables.token_vocab))


def _lookup_sorted(keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, position) of each ``query`` value in the sorted array ``keys``."""
    if len(keys) == 0:
        return np.zeros(query.shape, dtype=bool), np.zeros(query.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return keys[pos] == query, pos


def _context_column(context: dict, name: str, rows: int, default: float = np.nan) -> np.ndarray:
    value = context.get(name, default)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)).astype(np.float64)


def _affinity_profile(tables: FeatureTables, recent: np.ndarray) -> np.ndarray:
    n_rows = len(recent)
    n_labels = len(tables.label_field)
    valid = recent >= 0
    labels = np.where(valid[..., None], tables.affinity_labels[np.maximum(recent, 0)], 0)  # [B, L, W]
    row = np.arange(n_rows)[:, None, None]
    profile = np.bincount((row * n_labels + labels).ravel(), minlength=n_rows * n_labels)
    profile = profile.reshape(n_rows, n_labels).astype(np.float32)
    profile[:, 0] = 0.0
    profile /= np.maximum(valid.sum(1), 1)[:, None]
    return profile


def _affinity(tables: FeatureTables, profile: np.ndarray, cands: np.ndarray) -> list[np.ndarray]:
    """Per field: mean over the candidate's labels of the share of recent items carrying that label."""
    # One flat gather for all fields: cheaper than indexing the 2-D profile field by field.
    labels, starts, counts = tables.affinity_slots
    offsets = (np.arange(len(cands)) * profile.shape[1])[:, None, None]
    sums = np.add.reduceat(profile.ravel()[offsets + labels[cands]], starts, axis=-1) / counts[cands]
    return [sums[..., field] for field in range(len(starts))]


def _token_keys(tables: FeatureTables, recent: np.ndarray) -> np.ndarray:
    last = recent[:, -RECENT_FOR_OVERLAP:]
    tokens = np.where((last >= 0)[..., None], tables.item_tokens[np.maximum(last, 0)], 0)
    rows = np.arange(len(recent), dtype=np.int64)
    keys = np.sort((rows[:, None, None] * np.int64(tables.token_vocab) + tokens)[tokens > 0])
    return keys[_run_starts(keys)]


def _token_overlap(tables: FeatureTables, token_keys: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Share of the candidate's tokens that also occur among the user's last few items."""
    rows = np.arange(len(cands), dtype=np.int64)
    cand_tokens = tables.item_tokens[cands]  # [B, C, W]
    query = rows[:, None, None] * np.int64(tables.token_vocab) + cand_tokens
    cells = len(cands) * tables.token_vocab
    if cells <= TOKEN_MASK_CELLS:  # a dense mask is one gather instead of a binary search per token
        mask = np.zeros(cells, dtype=bool)
        mask[token_keys] = True
        found = mask[query]
    else:
        found, _ = _lookup_sorted(token_keys, query)
    # Padding (token 0) is never a key, so only real tokens are found.
    return found.sum(-1) / tables.item_token_count[cands]


def _cooccurrence_sums(tables: FeatureTables, recent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys (row * n_items + item) of the last few items' neighbours and their decayed weights."""
    last = recent[:, -RECENT_FOR_COOC:]
    decay = COOC_DECAY ** np.arange(last.shape[1] - 1, -1, -1, dtype=np.float32)  # most recent -> 1
    nbrs = tables.neighbors[np.maximum(last, 0)]  # [B, J, M]
    weights = tables.neighbor_weights[np.maximum(last, 0)] * decay[None, :, None]
    valid = (last >= 0)[..., None] & (nbrs >= 0)
    rows = np.arange(len(recent), dtype=np.int64)[:, None, None]
    return _sum_by_key((rows * np.int64(tables.n_items) + nbrs)[valid], weights[valid])


def _ease_sums(tables: FeatureTables, seen: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Sorted keys (row * n_items + item) of every seen item's EASE neighbours and their summed
    weights: the EASE score of each such item (the truncated weights of `recsys.models.ease`)."""
    rows = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr))
    nbrs = tables.ease_neighbors[seen.indices]  # [nnz, E]
    valid = nbrs >= 0
    keys = rows[:, None] * np.int64(tables.n_items) + nbrs
    return _sum_by_key(keys[valid], tables.ease_weights[seen.indices][valid])


def _keyed(keys: np.ndarray, sums: np.ndarray, n_items: int, cands: np.ndarray) -> np.ndarray:
    """Each candidate's summed weight under its row's key (0 where it has none)."""
    query = np.arange(len(cands), dtype=np.int64)[:, None] * np.int64(n_items) + cands
    found, pos = _lookup_sorted(keys, query)
    return np.where(found, sums[pos] if len(keys) else 0.0, 0.0)


def _sum_by_key(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` and the float64 sum of their ``weights`` (in input order, like
    np.bincount over np.unique's inverse, without np.unique's per-call overhead)."""
    order = np.argsort(keys, kind="stable")
    keys, weights = keys[order], weights[order].astype(np.float64)
    if len(keys) == 0:
        return keys, weights
    starts = np.flatnonzero(_run_starts(keys))
    return keys[starts], np.add.reduceat(weights, starts)


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Mask of the first entry of each run of equal values (np.unique without its per-call overhead)."""
    return np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])) if len(sorted_keys) else np.zeros(0, bool)


def _cooccurrence(tables: FeatureTables, user: UserSide, cands: np.ndarray) -> np.ndarray:
    """Sum over the last few items of the candidate's neighbour weight, most recent weighted most."""
    return _keyed(user.cooc_keys, user.cooc_sums, tables.n_items, cands)


def _similarity(user: UserSide, cand_vecs: np.ndarray) -> tuple[np.ndarray, ...]:
    # [B, J, C]: reducing over the few recent items along a leading axis is several times faster
    # than over a trailing axis of length J.
    sims = np.matmul(user.recent_vecs, np.swapaxes(cand_vecs, 1, 2))
    valid = user.recent_valid
    sim_last = np.where(valid[:, -1:], sims[:, -1], 0.0)
    sim_max = np.where(valid.any(-1)[:, None], np.where(valid[:, :, None], sims, -np.inf).max(1), 0.0)
    return sim_last, sim_max


def _time_columns(tables: FeatureTables, context: dict, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Request time per row and the time-count column it reads: interactions before its own bin."""
    edges = tables.time_edges
    if TIMESTAMP not in context:  # e.g. serving: the request is "now", after the last edge
        return np.full(n_rows, float(edges[-1])), np.full(n_rows, len(edges) - 1)
    now = _context_column(context, TIMESTAMP, n_rows)
    now = np.where(np.isnan(now), edges[-1], now)
    return now, np.clip(np.searchsorted(edges, now, side="right") - 1, 0, len(edges) - 1)


def _time_features(tables: FeatureTables, cands: np.ndarray, context: dict,
                   history_len: np.ndarray) -> list[np.ndarray]:
    """Item popularity and trend as of the request's time bin, item age, user's time gap."""
    n_rows = len(cands)
    now, col = _time_columns(tables, context, n_rows)
    if n_rows and (col == col[0]).all():  # e.g. serving: every request reads the latest column
        items = tables.time_features_at(int(col[0]))[cands]
    else:
        items = item_time_features(tables, cands, np.broadcast_to(col[:, None], cands.shape))
    return [items[..., 0], items[..., 1], items[..., 2], _time_gap(context, now, history_len)[:, None]]


def _time_gap(context: dict, now: np.ndarray, history_len: np.ndarray) -> np.ndarray:
    """log1p of the time since the user's previous interaction; 0 when it is unknown."""
    if LAST_TIMESTAMP not in context:
        return np.zeros(len(now))
    last = _context_column(context, LAST_TIMESTAMP, len(now))
    gap = np.where(np.isnan(last) | (last < 0) | np.isnan(now), 0.0, np.log1p(np.maximum(now - last, 0)))
    return np.where(history_len > 0, gap, 0.0)


@functools.lru_cache(maxsize=8)
def _log_ranks(n_cands: int) -> np.ndarray:
    ranks = np.log1p(np.arange(n_cands))
    ranks.flags.writeable = False
    return ranks


def build_features(tables: FeatureTables, history: History, cands: np.ndarray, scores: np.ndarray,
                   cand_vecs: np.ndarray, item_vectors: np.ndarray, context: dict | None = None,
                   ranks: np.ndarray | None = None, top_scores: np.ndarray | None = None,
                   user: UserSide | None = None) -> np.ndarray:
    """[B, C, F] float32 features in ``tables.feature_names()`` order.

    ``history`` rows, ``cands`` ([B, C] item indices, -1 = empty slot), ``scores`` (their
    retrieval scores) and context arrays are aligned with the batch rows; ``cand_vecs`` are
    ``item_vectors[cands]`` (the ranker needs them too, so they come in). By default the
    candidates are the retrieval list in order; training lists mixing retrieved and random items
    pass each one's retrieval ``ranks`` and the user's ``top_scores`` (best retrieval score).
    ``user`` is `user_side` of these rows when the caller already has it.
    """
    context = context or {}
    n_rows, n_cands = cands.shape
    user = user if user is not None else user_side(tables, history, item_vectors)
    safe = np.maximum(cands, 0)
    finite = np.isfinite(scores)
    clean = np.where(finite, scores, 0.0)
    if top_scores is None:
        top_scores = np.where(finite.any(1), np.where(finite, scores, -np.inf).max(1), 0.0)
    # Columns may be [B, 1] or [1, C]: writing them into ``out`` broadcasts (np.broadcast_to is slow).
    rank_feature = _log_ranks(n_cands)[None, :] if ranks is None else np.log1p(ranks)
    item_pop = tables.item_log_count[safe]
    # A group whose every feature is disabled is not computed (a student ranker may do without).
    skip = set(tables.disabled)
    zero = np.zeros((n_rows, n_cands), np.float32)

    def group(names: list[str], compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        return [zero] * len(names) if skip.issuperset(names) else compute()

    columns = [clean, rank_feature, np.where(finite, clean - np.asarray(top_scores)[:, None], 0.0),
               item_pop, np.log1p(user.history_len)[:, None], user.user_pop, item_pop - user.user_pop]
    columns += group(["cooc_recent"], lambda: [_cooccurrence(tables, user, safe)])
    columns += group(["sim_last", "sim_recent_max"], lambda: list(_similarity(user, cand_vecs)))
    if tables.has_ease:
        columns += group(["ease_score"], lambda: [_keyed(user.ease_keys, user.ease_sums, tables.n_items, safe)])
    if tables.affinity_fields:
        columns += group([f"affinity:{name}" for name in tables.affinity_fields],
                         lambda: _affinity(tables, user.affinity_profile, safe))
    if tables.token_vocab > 1:
        columns += group(["token_overlap"], lambda: [_token_overlap(tables, user.token_keys, safe)])
    if tables.has_time:
        columns += group(list(TIME_FEATURES), lambda: _time_features(tables, safe, context, user.history_len))
    for name in tables.context_columns:
        value = np.nan_to_num(_context_column(context, name, n_rows), nan=-1.0)
        columns.append(value[:, None])
    out = np.empty((n_rows, n_cands, len(columns)), dtype=np.float32)
    for position, column in enumerate(columns):
        out[..., position] = column
    if tables.disabled:
        names = tables.feature_names()
        out[..., [names.index(name) for name in tables.disabled]] = 0.0
    out[cands < 0] = 0.0
    return out
