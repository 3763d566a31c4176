"""Catalogue rows -> one searchable text per item, and queries -> the lexical channel's tokens.

An item's text is its title, then its label columns (genres, category, tags, brand), then its year:
the order a person would describe it in, so the encoder reads the title first. The lexical
channel reads whole words *and* their character trigrams: words reward an exact match, trigrams
keep a misspelt or partial word ("strar wars", "empir") close to the right title.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from recsys.data.idmap import IdMap

MAX_QUERY_CHARS = 256  # longer is not a shopper typing; the HTTP edge refuses it with a 422
TEXT_COLUMNS = ("title", "name", "genres", "category", "tags", "brand", "description")
YEAR_COLUMNS = ("year",)
NGRAM = 3
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(str(text).lower())


def lexical_tokens(text: str) -> list[str]:
    """Whole words (prefixed ``=``) and the trigrams of each word padded with ``#``."""
    tokens = []
    for word in words(text):
        tokens.append(f"={word}")
        padded = f"#{word}#"
        tokens.extend(padded[i:i + NGRAM] for i in range(max(1, len(padded) - NGRAM + 1)))
    return tokens


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def text_columns(items: pd.DataFrame) -> list[str]:
    """The catalogue columns an item's text is made of, in reading order."""
    return [column for column in (*TEXT_COLUMNS, *YEAR_COLUMNS) if column in items.columns]


def item_texts(items: pd.DataFrame, item_map: IdMap, n_items: int) -> list[str]:
    """One text per bundle row (``item_map`` order); items missing from the catalogue get ""."""
    texts = [""] * n_items
    columns = text_columns(items)
    if not columns:
        return texts
    rows = item_map.to_index(items["item_id"].to_numpy(), missing=-1)
    values = items[columns].to_numpy(dtype=object)
    seen_labels = {"genres", "category"}
    for row, cells in zip(rows.tolist(), values, strict=True):
        if row < 0:
            continue
        parts, labels = [], set()
        for column, value in zip(columns, cells, strict=True):
            text = _cell(value)
            if not text:
                continue
            if column in seen_labels:  # ml-100k's category is the first of its genres: say it once
                fresh = [label for label in text.split() if label.lower() not in labels]
                labels.update(label.lower() for label in text.split())
                text = " ".join(fresh)
            if text:
                parts.append(text)
        texts[row] = ". ".join(parts)
    return texts


def normalise_query(text: str) -> str:
    """Collapse whitespace; the edge has refused empty and over-long queries already."""
    return " ".join(str(text).split())
