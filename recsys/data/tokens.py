"""Side information as token bags: every item (and user) becomes a short list of feature tokens.

A catalog column becomes tokens by its kind: ``title`` -> words, ``category``/``genres`` -> one
token per label, numeric columns -> quantile buckets, other low-cardinality text -> one token.
Token 0 is padding, so rows for ids missing from a table are simply empty.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.idmap import IdMap

N_BUCKETS = 10
MAX_CATEGORICAL = 1000
MAX_TITLE_TOKENS = 8
MIN_TOKEN_COUNT = 2
MULTI_LABEL = ("category", "genres", "tags")


@dataclass
class TokenTable:
    tokens: np.ndarray  # [rows, width] int64 token ids, 0 = padding
    vocab: list[str]  # token id -> name; vocab[0] == "<pad>"

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def save(self, path: Path) -> None:
        np.save(Path(path).with_suffix(".npy"), self.tokens)
        Path(path).with_suffix(".json").write_text(json.dumps(self.vocab))

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        return cls(np.load(Path(path).with_suffix(".npy")), json.loads(Path(path).with_suffix(".json").read_text()))


def empty_table(n_rows: int) -> TokenTable:
    return TokenTable(np.zeros((n_rows, 1), dtype=np.int64), ["<pad>"])


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", str(text).lower())[:MAX_TITLE_TOKENS]


def _labels(text: str) -> list[str]:
    return [label for label in re.split(r"[|,;]\s*|\s+", str(text)) if label]


def _buckets(values: pd.Series) -> list[list[str]]:
    numeric = pd.to_numeric(values, errors="coerce")
    edges = np.unique(np.nanquantile(numeric.dropna(), np.linspace(0, 1, N_BUCKETS + 1)[1:-1])) \
        if numeric.notna().any() else np.array([])
    bucket = np.searchsorted(edges, numeric.to_numpy(), side="right")
    return [[] if np.isnan(v) else [str(b)] for v, b in zip(numeric.to_numpy(), bucket, strict=True)]


def column_tokens(name: str, values: pd.Series) -> list[list[str]] | None:
    """Tokens per row for one column, or None when the column carries no usable signal."""
    if name == "title":
        return [[f"title:{w}" for w in _words(v)] for v in values]
    if name in MULTI_LABEL:
        return [[f"{name}:{label}" for label in _labels(v)] for v in values]
    if pd.api.types.is_numeric_dtype(values):
        return [[f"{name}:{b}" for b in bs] for bs in _buckets(values)]
    if values.nunique() <= MAX_CATEGORICAL:
        return [[f"{name}:{v}"] for v in values.astype(str)]
    return None


def build_token_table(table: pd.DataFrame | None, key: str, idmap: IdMap) -> TokenTable:
    """Token ids per id in ``idmap`` order; rare tokens (seen once) are dropped to limit overfitting."""
    if table is None:
        return empty_table(len(idmap))
    positions = idmap.to_index(table[key].to_numpy(), missing=-1)
    table = table[positions >= 0]
    positions = positions[positions >= 0]
    per_row: list[list[str]] = [[] for _ in range(len(table))]
    for column in table.columns:
        if column == key:
            continue
        tokens = column_tokens(column, table[column])
        if tokens is not None:
            for row, extra in zip(per_row, tokens, strict=True):
                row.extend(extra)
    counts = pd.Series([t for row in per_row for t in row], dtype=object).value_counts()
    vocab = ["<pad>", *sorted(counts[counts >= MIN_TOKEN_COUNT].index)]
    lookup = {token: i for i, token in enumerate(vocab)}
    rows = [[lookup[t] for t in row if t in lookup] for row in per_row]
    width = max(1, max((len(r) for r in rows), default=1))
    tokens = np.zeros((len(idmap), width), dtype=np.int64)
    for position, row in zip(positions, rows, strict=True):
        tokens[position, : len(row)] = row
    return TokenTable(tokens, vocab)
