"""A base interaction log plus the server's stored feedback events, as one log in the training schema.

Events are kept even when their user or item is new: a new user simply joins the log, a new
item also gets a catalogue row (and a new user a user-table row) with blank text and missing
numbers, because training requires every logged id to be in the side tables. Ids keep the base
log's type when every event id fits it (``"42"`` joins an integer log as 42, the way the server
reads it); otherwise the whole column, side table included, becomes text.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.datasets import Dataset
from recsys.data.schema import EVENT, ITEM, TIME, USER, WEIGHT

log = logging.getLogger(__name__)

_DECIMAL = re.compile(r"-?[0-9]+")
_INT64 = np.iinfo(np.int64)
BASE_EVENT = "interaction"


@dataclass
class MergedLog:
    interactions: pd.DataFrame
    items: pd.DataFrame | None
    users: pd.DataFrame | None
    n_base: int
    n_events: int
    new_users: int
    new_items: int

    def describe(self) -> str:
        return (f"{self.n_base:,} base interactions + {self.n_events:,} events = {len(self.interactions):,} rows "
                f"({self.new_users:,} new users, {self.new_items:,} new items)")


def merge_events(base: Dataset, events: pd.DataFrame) -> MergedLog:
    """``base`` interactions then ``events`` (columns of ``EventStore.to_frame()``), in that order.

    The order matters: the temporal split breaks timestamp ties by file order.
    """
    columns = [USER, ITEM, TIME] + [c for c in (EVENT, WEIGHT) if c in base.interactions.columns]
    inter = base.interactions[columns].copy()
    items, users = base.items, base.users
    if events.empty:
        return MergedLog(inter, items, users, len(inter), 0, 0, 0)
    events = events[[USER, ITEM, TIME, EVENT, WEIGHT]].reset_index(drop=True)
    if EVENT not in inter.columns:
        inter[EVENT] = BASE_EVENT
    if WEIGHT not in inter.columns:
        inter[WEIGHT] = np.float32(1.0)
    events = events.astype({TIME: np.int64, WEIGHT: np.float32})
    inter[USER], events[USER], users_as_text = _common_ids(inter[USER], events[USER])
    inter[ITEM], events[ITEM], items_as_text = _common_ids(inter[ITEM], events[ITEM])
    new_users = _new_ids(events[USER], inter[USER])
    new_items = _new_ids(events[ITEM], inter[ITEM])
    if users is not None:
        users = _with_rows(users, USER, events[USER], users_as_text)
    if items is not None:
        items = _with_rows(items, ITEM, events[ITEM], items_as_text)
    merged = pd.concat([inter, events], ignore_index=True)
    return MergedLog(merged, items, users, len(inter), len(events), new_users, new_items)


def _common_ids(base: pd.Series, events: pd.Series) -> tuple[pd.Series, pd.Series, bool]:
    """Both id columns in one type; the flag says whether integer base ids had to become text."""
    if not pd.api.types.is_integer_dtype(base):
        return base.astype(str).astype(object), events.astype(str).astype(object), False
    text = events.astype(str).str.strip()
    if text.map(_fits_int64).all():
        return base, text.astype(np.int64), False
    return base.astype(str).astype(object), text.astype(object), True


def _fits_int64(raw: str) -> bool:
    return bool(_DECIMAL.fullmatch(raw)) and _INT64.min <= int(raw) <= _INT64.max


def _new_ids(candidates: pd.Series, known: pd.Series) -> int:
    return int(pd.unique(candidates[~candidates.isin(known)]).size)


def _with_rows(table: pd.DataFrame, key: str, ids: pd.Series, as_text: bool) -> pd.DataFrame:
    """``table`` plus one row per id it lacks: blank text, missing numbers."""
    table = table.copy()
    if as_text:
        table[key] = table[key].astype(str).astype(object)
    missing = pd.unique(ids[~ids.isin(table[key])])
    if not len(missing):
        return table
    extra = pd.DataFrame({key: missing})
    for column in table.columns:
        if column != key:
            extra[column] = np.nan if pd.api.types.is_numeric_dtype(table[column]) else ""
    return pd.concat([table, extra], ignore_index=True)


@dataclass(frozen=True)
class LogFiles:
    interactions: Path
    items: Path | None
    users: Path | None

    def dataset_args(self) -> list[str]:
        """``--dataset/--items/--users`` for ``recsys.train`` and ``compression``."""
        args = ["--dataset", str(self.interactions)]
        if self.items is not None:
            args += ["--items", str(self.items)]
        if self.users is not None:
            args += ["--users", str(self.users)]
        return args


def write_log(merged: MergedLog, directory: Path, name: str) -> LogFiles:
    """Parquet files (exact dtypes) named so the dataset keeps its name: ``<name>.parquet``."""
    directory.mkdir(parents=True, exist_ok=True)
    interactions = directory / f"{name}.parquet"
    merged.interactions.to_parquet(interactions, index=False)
    items = users = None
    if merged.items is not None:
        items = directory / "items.parquet"
        merged.items.to_parquet(items, index=False)
    if merged.users is not None:
        users = directory / "users.parquet"
        merged.users.to_parquet(users, index=False)
    return LogFiles(interactions.resolve(), items and items.resolve(), users and users.resolve())
