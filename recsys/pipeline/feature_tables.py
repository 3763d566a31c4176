"""The arrays the ranking feature builder reads, built once from the training interactions.

`FeatureTables` (item tokens and category-like labels, popularity, co-occurrence neighbours,
EASE neighbours, time-binned item counts) is saved beside the ranker and inside every bundle with a ranker;
`build_feature_tables` makes it from a split's train rows, so no count includes a held-out row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.tokens import MULTI_LABEL, TokenTable
from recsys.models.ease import ease_weights, strongest_weights
from recsys.split import Split

TREND_BINS = 2  # "recent" item traffic = the last this-many time bins before the request
TIME_FEATURE_CACHE = 4  # time columns whose per-item features are kept (serving reads one)
MAX_TIME_CELLS = 20_000_000  # n_items * n_bins cap for the cumulative count table
TIME_FEATURES = ("item_pop_asof", "item_trend", "item_age", "user_gap")
# Timestamps at or above this look like unix seconds, i.e. comparable across users; Instacart's
# per-user pseudo-time (order_number * 1000 + cart position) does not, and gets no time features.
UNIX_TIME_FLOOR = 100_000_000
# The EASE feature's solve is O(n_items^3): about a minute at 14k items (Instacart) on this box's
# two cores; larger catalogues go without it. Each item keeps its strongest EASE_NEIGHBORS weights.
EASE_MAX_ITEMS = 20_000
EASE_NEIGHBORS = 64


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
    # [n_items, E] int32 / float32 each item's strongest EASE weights (`recsys.models.ease`), -1 =
    # none; empty when the tables have no EASE feature (``has_ease`` False: a large catalogue, or tables
    # saved before it existed) or have it disabled (a student: the arrays are not shipped)
    has_ease: bool = False
    ease_neighbors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))
    ease_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
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

        return {"cooc": wanted(["cooc_recent"]), "ease": self.has_ease and wanted(["ease_score"]),
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
        if self.has_ease:
            names.append("ease_score")
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
                "disabled": self.disabled, "token_vocab": self.token_vocab, "ease": self.has_ease}
        return {"meta": np.array(json.dumps(meta)), **{name: getattr(self, name) for name in ARRAY_FIELDS}}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureTables:
        meta = json.loads(str(arrays["meta"]))
        return cls(**{name: arrays[name] for name in ARRAY_FIELDS if name in arrays},
                   affinity_fields=tuple(meta["affinity_fields"]), context_columns=tuple(meta["context_columns"]),
                   disabled=tuple(meta["disabled"]), token_vocab=int(meta["token_vocab"]),
                   has_ease=bool(meta.get("ease", arrays.get("ease_neighbors", np.zeros(0)).size > 0)))

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
        narrowed = replace(self, disabled=tuple(disabled))
        # Arrays that only disabled features read are not shipped (at 1M items the content and
        # co-occurrence arrays are ~300 MB of a bundle): each becomes [n_items, 0].
        wanted = narrowed.wanted_groups
        unread = [*(["ease_neighbors", "ease_weights"] if "ease_score" in disabled else []),
                  *([] if wanted["token"] else ["item_tokens"]),
                  *([] if wanted["affinity"] else ["affinity_labels"]),
                  *([] if wanted["cooc"] else ["neighbors", "neighbor_weights"])]
        return replace(narrowed, **{name: np.zeros((self.n_items, 0), getattr(self, name).dtype) for name in unread})

ARRAY_FIELDS = ("item_tokens", "affinity_labels", "label_field", "item_log_count", "neighbors",
                "neighbor_weights", "time_edges", "item_time_counts", "ease_neighbors", "ease_weights")


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
    cumulative = np.cumsum(counts, axis=1, dtype=np.uint32)
    # The smallest unsigned type that holds the largest count: uint16 halves the table at 1M items.
    return edges, cumulative.astype(np.min_scalar_type(int(cumulative.max(initial=0))), copy=False)


def ease_tables(split: Split, n_neighbors: int = EASE_NEIGHBORS) -> dict:
    """The EASE feature's fields of `FeatureTables`, fitted on the train rows: each item's
    strongest weights; nothing above EASE_MAX_ITEMS items."""
    if split.n_items > EASE_MAX_ITEMS:
        return {}
    # float32 halves the solve's time and memory; the weights feed a feature, not a ranking alone.
    neighbors, weights = strongest_weights(ease_weights(split.history("valid"), dtype=np.float32), n_neighbors)
    return {"has_ease": True, "ease_neighbors": neighbors, "ease_weights": weights}


def build_feature_tables(split: Split, item_tokens: TokenTable, time_features: bool | None = None,
                         n_neighbors: int = 32, window: int = 3, time_bins: int = 64,
                         ease: bool = True) -> FeatureTables:
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
                         **(ease_tables(split) if ease else {}),
                         context_columns=tuple(split.context_columns), token_vocab=len(item_tokens.vocab))


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
