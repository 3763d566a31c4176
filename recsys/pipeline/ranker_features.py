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
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.history import History
from recsys.data.tokens import MULTI_LABEL, TokenTable
from recsys.split import Split

TIMESTAMP = "timestamp"


LAST_TIMESTAMP = "last_timestamp"


RECENT_FOR_OVERLAP = 5  # most recent items whose tokens / vectors the candidate is compared with


RECENT_FOR_COOC = 5


COOC_DECAY = 0.7  # weight of the j-th most recent item's neighbours: decay ** j


TREND_BINS = 2  # "recent" item traffic = the last this-many time bins before the request


TIME_FEATURE_CACHE = 4  # time columns whose per-item features are kept (serving reads one)


MAX_TIME_CELLS = 20_000_000  # n_items * n_bins cap for the cumulative count table


TOKEN_MASK_CELLS = 1 << 24  # batch rows * token vocab up to which token lookups use a dense mask


TIME_FEATURES = ("item_pop_asof", "item_trend", "item_age", "user_gap")


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

    def time_features_at(self, col: int) -> np.ndarray:
        """[n_items, 3] `item_time_features` of every item at one column, kept for reuse."""
        cache = self.__dict__.setdefault("_time_features_at", {})
        if col not in cache:
            if len(cache) >= TIME_FEATURE_CACHE:
                del cache[next(iter(cache))]
            items = np.arange(self.n_items)
            cache[col] = item_time_features(self, items, np.full(self.n_items, col))
        return cache[col]

    @cached_property
    def affinity_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each item's affinity labels grouped by field, so one gather serves every field:
        [n_items, sum W_f] labels in slot order (0 = none; the profile's column 0 is 0), [n_fields]
        the first column of each field's group, [n_items, n_fields] labels per field (at least 1)."""
        groups, counts = [], []
        for field_index in range(len(self.affinity_fields)):
            mask = (self.affinity_labels > 0) & (self.label_field[self.affinity_labels] == field_index)
            width = max(int(mask.sum(1).max(initial=0)), 1)
            slot = np.cumsum(mask, axis=1) - 1
            labels = np.zeros((self.n_items, width), dtype=self.affinity_labels.dtype)
            item, position = np.nonzero(mask)
            labels[item, slot[item, position]] = self.affinity_labels[item, position]
            groups.append(labels)
            counts.append(np.maximum(mask.sum(1), 1).astype(np.float64))
        starts = np.cumsum([0] + [group.shape[1] for group in groups[:-1]])
        return np.concatenate(groups, axis=1), starts, np.stack(counts, axis=1)

    @cached_property
    def item_token_count(self) -> np.ndarray:
        """[n_items] how many real (non-padding) tokens each item has, at least 1."""
        return np.maximum((self.item_tokens > 0).sum(1), 1)

    @cached_property
    def item_first_edge(self) -> np.ndarray:
        """[n_items] first time edge with any interaction before it (0 for items never seen)."""
        return (self.item_time_counts > 0).argmax(1)

    @cached_property
    def wanted_groups(self) -> dict[str, bool]:
        """Which user-dependent feature groups have a feature that is not disabled."""
        def wanted(names: list[str]) -> bool:
            return bool(names) and not set(self.disabled).issuperset(names)

        return {"cooc": wanted(["cooc_recent"]),
                "affinity": wanted([f"affinity:{name}" for name in self.affinity_fields]),
                "token": self.token_vocab > 1 and wanted(["token_overlap"])}

    def content_features(self) -> list[str]:
        """The content-overlap features: category / genre affinity and token overlap. They cost
        the most per request (two user-side aggregates and two gathers over every candidate's
        labels) and overlap most with what the towers learn from the same item tokens."""
        return [name for name in self.feature_names() if name.startswith("affinity:") or name == "token_overlap"]

    def feature_names(self) -> list[str]:
        names = ["retrieval_score", "retrieval_rank", "score_gap", "item_log_count", "user_history_len",
                 "user_mean_pop", "pop_gap", "cooc_recent", "sim_last", "sim_recent_max"]
        names += [f"affinity:{name}" for name in self.affinity_fields]
        if self.token_vocab > 1:
            names.append("token_overlap")
        if self.has_time:
            names += list(TIME_FEATURES)
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
    keys, sums = (_cooccurrence_sums(tables, recent) if wanted["cooc"]
                  else (np.zeros(0, np.int64), np.zeros(0, np.float64)))
    return UserSide(history_len=np.diff(history.seen.indptr).astype(np.float64), user_pop=user_pop,
                    recent_vecs=item_vectors[np.maximum(last, 0)], recent_valid=last >= 0,
                    cooc_keys=keys, cooc_sums=sums,
                    affinity_profile=_affinity_profile(tables, recent) if wanted["affinity"] else None,
                    token_keys=_token_keys(tables, recent) if wanted["token"] else None)


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
    query = np.arange(len(cands), dtype=np.int64)[:, None] * np.int64(tables.n_items) + cands
    found, pos = _lookup_sorted(user.cooc_keys, query)
    return np.where(found, user.cooc_sums[pos] if len(user.cooc_keys) else 0.0, 0.0)


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


def item_time_features(tables: FeatureTables, items: np.ndarray, col: np.ndarray) -> np.ndarray:
    """[..., 3] item popularity and trend as of time-count column ``col`` (broadcast with
    ``items``), and the item's age in bins (-1 before its first interaction)."""
    cum = tables.item_time_counts
    before = cum[items, col].astype(np.float64)
    window_start = np.maximum(col - TREND_BINS, 0)
    recent = before - cum[items, window_start]
    total_before = tables.time_totals[col]
    total_recent = total_before - tables.time_totals[window_start]
    pop_asof = np.log((before + 1.0) / (total_before + tables.n_items))
    trend = np.log((recent + 1.0) / (total_recent + tables.n_items)) - pop_asof
    age = np.where(before > 0, np.maximum(col - tables.item_first_edge[items], 0), -1).astype(np.float64)
    return np.stack([pop_asof, trend, age], axis=-1)


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
