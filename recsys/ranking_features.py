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

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.features import MULTI_LABEL, TokenTable
from recsys.recommender import History
from recsys.split import Split

TIMESTAMP = "timestamp"
LAST_TIMESTAMP = "last_timestamp"
RECENT_FOR_OVERLAP = 5  # most recent items whose tokens / vectors the candidate is compared with
RECENT_FOR_COOC = 5
COOC_DECAY = 0.7  # weight of the j-th most recent item's neighbours: decay ** j
TREND_BINS = 2  # "recent" item traffic = the last this-many time bins before the request
MAX_TIME_CELLS = 20_000_000  # n_items * n_bins cap for the cumulative count table
# Timestamps at or above this look like unix seconds, i.e. comparable across users; Instacart's
# per-user pseudo-time (order_number * 1000 + cart position) does not, and gets no time features.
UNIX_TIME_FLOOR = 100_000_000


@dataclass
class FeatureTables:
    """Item-side arrays the builder reads; everything here is saved beside the ranker."""

    item_tokens: np.ndarray  # [n_items, W] int64 feature tokens, 0 = padding
    affinity_labels: np.ndarray  # [n_items, W] int32 category-like labels remapped to 1..n, 0 = none
    label_field: np.ndarray  # [n_labels + 1] int32 index into affinity_fields (entry 0 unused)
    item_log_count: np.ndarray  # [n_items] float32 log1p(train interactions)
    neighbors: np.ndarray  # [n_items, M] int32 items that follow this one in sessions, -1 = none
    neighbor_weights: np.ndarray  # [n_items, M] float32
    time_edges: np.ndarray  # [n_bins + 1] int64 bin edges; empty = no time features
    item_time_counts: np.ndarray  # [n_items, n_bins + 1] uint32 interactions before each edge
    affinity_fields: tuple[str, ...] = ()
    context_columns: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()  # feature names forced to 0 (ablations)
    token_vocab: int = 1

    @property
    def n_items(self) -> int:
        return len(self.item_log_count)

    @property
    def has_time(self) -> bool:
        return self.time_edges.size > 0

    @cached_property
    def time_totals(self) -> np.ndarray:
        """[n_bins + 1] interactions of all items before each time edge."""
        return self.item_time_counts.sum(0, dtype=np.float64)

    def feature_names(self) -> list[str]:
        names = ["retrieval_score", "retrieval_rank", "score_gap", "item_log_count", "user_history_len",
                 "user_mean_pop", "pop_gap", "cooc_recent", "sim_last", "sim_recent_max"]
        names += [f"affinity:{name}" for name in self.affinity_fields]
        if self.token_vocab > 1:
            names.append("token_overlap")
        if self.has_time:
            names += ["item_pop_asof", "item_trend", "item_age", "user_gap"]
        names += [f"context:{name}" for name in self.context_columns]
        return names

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Named arrays (what a bundle's ``ranking_features.npz`` holds); `from_arrays` inverts it."""
        meta = {"affinity_fields": self.affinity_fields, "context_columns": self.context_columns,
                "disabled": self.disabled, "token_vocab": self.token_vocab}
        return {"meta": np.array(json.dumps(meta)), **{name: getattr(self, name) for name in ARRAY_FIELDS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureTables:
        meta = json.loads(str(arrays["meta"]))
        return cls(**{name: arrays[name] for name in ARRAY_FIELDS},
                   affinity_fields=tuple(meta["affinity_fields"]), context_columns=tuple(meta["context_columns"]),
                   disabled=tuple(meta["disabled"]), token_vocab=int(meta["token_vocab"]))

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, **self.to_arrays())

    @classmethod
    def load(cls, path: Path) -> FeatureTables:
        with np.load(path) as data:
            return cls.from_arrays({name: data[name] for name in data.files})

    def without(self, disabled: tuple[str, ...]) -> FeatureTables:
        unknown = set(disabled) - set(self.feature_names())
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {self.feature_names()}")
        return replace(self, disabled=tuple(disabled))


ARRAY_FIELDS = ("item_tokens", "affinity_labels", "label_field", "item_log_count", "neighbors",
                "neighbor_weights", "time_edges", "item_time_counts")


# ---------------------------------------------------------------------------------------------
# Building the tables from training data


def has_global_time(split: Split) -> bool:
    return len(split.train) > 0 and int(split.train["t"].min()) >= UNIX_TIME_FLOOR


def affinity_tables(tokens: TokenTable) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Remap the tokens of category-like fields (category, genres, tags) to compact label ids."""
    fields = tuple(f for f in MULTI_LABEL if any(name.startswith(f + ":") for name in tokens.vocab))
    lookup = np.zeros(len(tokens.vocab), dtype=np.int32)
    label_field = [0]
    for field_index, name in enumerate(fields):
        ids = [i for i, token in enumerate(tokens.vocab) if token.startswith(name + ":")]
        lookup[ids] = np.arange(len(label_field), len(label_field) + len(ids))
        label_field += [field_index] * len(ids)
    return lookup[tokens.tokens], np.asarray(label_field, dtype=np.int32), fields


def cooccurrence_neighbors(frame: pd.DataFrame, n_items: int, window: int = 3,
                           n_neighbors: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Items that follow each item within ``window`` steps of a user's sequence, top by cosine."""
    users = frame["u"].to_numpy(np.int64)
    items = frame["i"].to_numpy(np.int64)
    src, dst, lag_weight = [], [], []
    for lag in range(1, window + 1):
        same = users[lag:] == users[:-lag]
        src.append(items[:-lag][same])
        dst.append(items[lag:][same])
        lag_weight.append(np.full(int(same.sum()), 1.0 / lag))
    src, dst, weight = np.concatenate(src), np.concatenate(dst), np.concatenate(lag_weight)
    keys, inverse = np.unique(src * n_items + dst, return_inverse=True)
    totals = np.bincount(inverse, weights=weight)
    pair_src, pair_dst = keys // n_items, keys % n_items
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    cosine = totals / np.sqrt(counts[pair_src] * counts[pair_dst])
    # Within each source item, strongest first; keep the first n_neighbors.
    order = np.lexsort((-cosine, pair_src))
    pair_src, pair_dst, cosine = pair_src[order], pair_dst[order], cosine[order]
    starts = np.searchsorted(pair_src, pair_src, side="left")
    rank = np.arange(len(pair_src)) - starts
    keep = rank < n_neighbors
    neighbors = np.full((n_items, n_neighbors), -1, dtype=np.int32)
    weights = np.zeros((n_items, n_neighbors), dtype=np.float32)
    neighbors[pair_src[keep], rank[keep]] = pair_dst[keep]
    weights[pair_src[keep], rank[keep]] = cosine[keep]
    return neighbors, weights


def time_count_table(frame: pd.DataFrame, n_items: int, n_bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width time bins over the data and each item's interaction count before every edge."""
    n_bins = max(4, min(n_bins, MAX_TIME_CELLS // max(n_items, 1) - 1))
    times = frame["t"].to_numpy(np.int64)
    edges = np.linspace(times.min(), times.max() + 1, n_bins + 1).round().astype(np.int64)
    bins = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, n_bins - 1)
    counts = np.zeros((n_items, n_bins + 1), dtype=np.uint32)
    np.add.at(counts, (frame["i"].to_numpy(np.int64), bins + 1), 1)
    return edges, np.cumsum(counts, axis=1, dtype=np.uint32)


def build_feature_tables(split: Split, item_tokens: TokenTable, time_features: bool | None = None,
                         n_neighbors: int = 32, window: int = 3, time_bins: int = 64) -> FeatureTables:
    """Tables from the train interactions (like Pop, the counts never include held-out rows)."""
    train = split.train
    counts = np.bincount(train["i"].to_numpy(), minlength=split.n_items)
    labels, label_field, fields = affinity_tables(item_tokens)
    neighbors, weights = cooccurrence_neighbors(train, split.n_items, window, n_neighbors)
    if time_features is None:
        time_features = has_global_time(split)
    if time_features:
        edges, time_counts = time_count_table(train, split.n_items, time_bins)
    else:
        edges, time_counts = np.zeros(0, np.int64), np.zeros((split.n_items, 0), np.uint32)
    return FeatureTables(item_tokens=item_tokens.tokens.astype(np.int64), affinity_labels=labels,
                         label_field=label_field, item_log_count=np.log1p(counts).astype(np.float32),
                         neighbors=neighbors, neighbor_weights=weights, time_edges=edges,
                         item_time_counts=time_counts, affinity_fields=fields,
                         context_columns=tuple(split.context_columns), token_vocab=len(item_tokens.vocab))


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


# ---------------------------------------------------------------------------------------------
# The builder


@dataclass
class _Request:
    """Per-row arrays derived once from History and context."""

    recent: np.ndarray  # [B, L] item indices, -1 = padding, most recent last
    history_len: np.ndarray  # [B]
    context: dict = field(default_factory=dict)


def _context_column(context: dict, name: str, rows: int, default: float = np.nan) -> np.ndarray:
    value = context.get(name, default)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (rows,)).astype(np.float64)


def _affinity(tables: FeatureTables, recent: np.ndarray, cands: np.ndarray) -> list[np.ndarray]:
    """Per field: mean over the candidate's labels of the share of recent items carrying that label."""
    n_rows = len(recent)
    n_labels = len(tables.label_field)
    valid = recent >= 0
    labels = np.where(valid[..., None], tables.affinity_labels[np.maximum(recent, 0)], 0)  # [B, L, W]
    row = np.broadcast_to(np.arange(n_rows)[:, None, None], labels.shape)
    profile = np.bincount((row * n_labels + labels).ravel(), minlength=n_rows * n_labels)
    profile = profile.reshape(n_rows, n_labels).astype(np.float32)
    profile[:, 0] = 0.0
    profile /= np.maximum(valid.sum(1), 1)[:, None]
    cand_labels = tables.affinity_labels[cands]  # [B, C, W]
    share = np.take_along_axis(profile, cand_labels.reshape(n_rows, -1), axis=1).reshape(cand_labels.shape)
    cand_field = tables.label_field[cand_labels]
    out = []
    for field_index in range(len(tables.affinity_fields)):
        mask = (cand_labels > 0) & (cand_field == field_index)
        out.append((share * mask).sum(-1) / np.maximum(mask.sum(-1), 1))
    return out


def _token_overlap(tables: FeatureTables, recent: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Share of the candidate's tokens that also occur among the user's last few items."""
    last = recent[:, -RECENT_FOR_OVERLAP:]
    tokens = np.where((last >= 0)[..., None], tables.item_tokens[np.maximum(last, 0)], 0)
    rows = np.arange(len(recent), dtype=np.int64)
    vocab = np.int64(tables.token_vocab)
    recent_keys = (rows[:, None, None] * vocab + tokens)[tokens > 0]
    cand_tokens = tables.item_tokens[cands]  # [B, C, W]
    present = np.isin(rows[:, None, None] * vocab + cand_tokens, recent_keys) & (cand_tokens > 0)
    return present.sum(-1) / np.maximum((cand_tokens > 0).sum(-1), 1)


def _cooccurrence(tables: FeatureTables, recent: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """Sum over the last few items of the candidate's neighbour weight, most recent weighted most."""
    last = recent[:, -RECENT_FOR_COOC:]
    decay = COOC_DECAY ** np.arange(last.shape[1] - 1, -1, -1, dtype=np.float32)  # most recent -> 1
    nbrs = tables.neighbors[np.maximum(last, 0)]  # [B, J, M]
    weights = tables.neighbor_weights[np.maximum(last, 0)] * decay[None, :, None]
    valid = (last >= 0)[..., None] & (nbrs >= 0)
    rows = np.broadcast_to(np.arange(len(recent), dtype=np.int64)[:, None, None], nbrs.shape)
    n_items = np.int64(tables.n_items)
    keys, inverse = np.unique((rows * n_items + nbrs)[valid], return_inverse=True)
    sums = np.bincount(inverse, weights=weights[valid])
    query = np.arange(len(recent), dtype=np.int64)[:, None] * n_items + cands
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    found = (keys[pos] == query) if len(keys) else np.zeros(query.shape, dtype=bool)
    return np.where(found, sums[pos] if len(keys) else 0.0, 0.0)


def _similarity(item_vectors: np.ndarray, cand_vecs: np.ndarray, recent: np.ndarray) -> tuple[np.ndarray, ...]:
    last = recent[:, -RECENT_FOR_OVERLAP:]
    vecs = item_vectors[np.maximum(last, 0)]  # [B, J, D]
    sims = np.einsum("bcd,bjd->bcj", cand_vecs, vecs)
    valid = (last >= 0)[:, None, :]
    sim_last = np.where(valid[..., -1], sims[..., -1], 0.0)
    sim_max = np.where(valid.any(-1), np.where(valid, sims, -np.inf).max(-1), 0.0)
    return sim_last, sim_max


def _time_features(tables: FeatureTables, cands: np.ndarray, context: dict,
                   history_len: np.ndarray) -> list[np.ndarray]:
    """Item popularity and trend as of the request's time bin, item age, user's time gap."""
    n_rows = len(cands)
    edges, cum = tables.time_edges, tables.item_time_counts
    n_bins = len(edges) - 1
    now = _context_column(context, TIMESTAMP, n_rows)
    now = np.where(np.isnan(now), edges[-1], now)
    # Column b of cum counts interactions before edge b; the request's own bin is left out.
    col = np.clip(np.searchsorted(edges, now, side="right") - 1, 0, n_bins)[:, None]
    before = cum[cands, np.broadcast_to(col, cands.shape)].astype(np.float64)
    window_start = np.maximum(col - TREND_BINS, 0)
    recent = before - cum[cands, np.broadcast_to(window_start, cands.shape)]
    total_before = tables.time_totals[col]  # [B, 1]
    total_recent = total_before - tables.time_totals[window_start]
    n_items = tables.n_items
    pop_asof = np.log((before + 1.0) / (total_before + n_items))
    trend = np.log((recent + 1.0) / (total_recent + n_items)) - pop_asof
    first_col = (cum[cands] > 0).argmax(-1)  # [B, C] first edge with any interaction
    age = np.where(before > 0, np.maximum(col - first_col, 0), -1).astype(np.float64)
    last = _context_column(context, LAST_TIMESTAMP, n_rows)
    gap = np.where(np.isnan(last) | (last < 0) | np.isnan(now), 0.0, np.log1p(np.maximum(now - last, 0)))
    gap = np.where(history_len > 0, gap, 0.0)
    return [pop_asof, trend, age, np.broadcast_to(gap[:, None], cands.shape)]


def build_features(tables: FeatureTables, history: History, cands: np.ndarray, scores: np.ndarray,
                   cand_vecs: np.ndarray, item_vectors: np.ndarray, context: dict | None = None,
                   ranks: np.ndarray | None = None, top_scores: np.ndarray | None = None) -> np.ndarray:
    """[B, C, F] float32 features in ``tables.feature_names()`` order.

    ``history`` rows, ``cands`` ([B, C] item indices, -1 = empty slot), ``scores`` (their
    retrieval scores) and context arrays are aligned with the batch rows; ``cand_vecs`` are
    ``item_vectors[cands]`` (the ranker needs them too, so they come in). By default the
    candidates are the retrieval list in order; training lists mixing retrieved and random items
    pass each one's retrieval ``ranks`` and the user's ``top_scores`` (best retrieval score).
    """
    context = context or {}
    n_rows, n_cands = cands.shape
    recent = history.recent
    safe = np.maximum(cands, 0)
    finite = np.isfinite(scores)
    clean = np.where(finite, scores, 0.0)
    if top_scores is None:
        top_scores = np.where(finite.any(1), np.where(finite, scores, -np.inf).max(1), 0.0)
    if ranks is None:
        ranks = np.broadcast_to(np.arange(n_cands), (n_rows, n_cands))
    history_len = np.diff(history.seen.indptr).astype(np.float64)
    recent_valid = recent >= 0
    item_pop = tables.item_log_count[safe]
    user_pop = (np.where(recent_valid, tables.item_log_count[np.maximum(recent, 0)], 0.0).sum(1)
                / np.maximum(recent_valid.sum(1), 1))[:, None]
    sim_last, sim_max = _similarity(item_vectors, cand_vecs, recent)
    columns = [clean, np.log1p(ranks), np.where(finite, clean - np.asarray(top_scores)[:, None], 0.0),
               item_pop, np.broadcast_to(np.log1p(history_len)[:, None], (n_rows, n_cands)),
               np.broadcast_to(user_pop, (n_rows, n_cands)), item_pop - user_pop,
               _cooccurrence(tables, recent, safe), sim_last, sim_max]
    if tables.affinity_fields:
        columns += _affinity(tables, recent, safe)
    if tables.token_vocab > 1:
        columns.append(_token_overlap(tables, recent, safe))
    if tables.has_time:
        columns += _time_features(tables, safe, context, history_len)
    for name in tables.context_columns:
        value = np.nan_to_num(_context_column(context, name, n_rows), nan=-1.0)
        columns.append(np.broadcast_to(value[:, None], (n_rows, n_cands)))
    out = np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=-1)
    if tables.disabled:
        names = tables.feature_names()
        out[..., [names.index(name) for name in tables.disabled]] = 0.0
    out[cands < 0] = 0.0
    return out
