"""Temporal leave-one-out split, exactly as ../shared/PROTOCOL.md defines it; nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.datasets import Dataset
from recsys.data.history import History
from recsys.data.idmap import IdMap
from recsys.data.schema import ITEM, TIME, USER, DataError

MIN_INTERACTIONS = 3
MAX_RECENT = 50
ROW = "row"


@dataclass
class Split:
    """Index-mapped frames (columns ``u``, ``i``, ``t`` + context) in canonical order."""

    users: IdMap
    items: IdMap
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    context_columns: tuple[str, ...] = ()

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def stage_frame(self, stage: str) -> pd.DataFrame:
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        return self.valid if stage == "valid" else self.test

    def history_frame(self, stage: str) -> pd.DataFrame:
        """What a model may know about each user when it is scored on ``stage``."""
        if stage == "valid":
            return self.train
        return pd.concat([self.train, self.valid]).sort_values(["u", "t", ROW], kind="stable")

    def history(self, stage: str) -> sp.csr_matrix:
        """Binary user x item matrix of the history (also the items excluded when scoring)."""
        return interaction_matrix(self.history_frame(stage), self.n_users, self.n_items)

    def user_history(self, stage: str, max_len: int = MAX_RECENT) -> History:
        """Seen set + the ``max_len`` most recent items of every user, as known when scoring ``stage``."""
        frame = self.history_frame(stage)
        return History(interaction_matrix(frame, self.n_users, self.n_items),
                       recent_items(frame, self.n_users, max_len))

    def whole(self) -> Split:
        """Every interaction as train, nothing held out: what a bundle published for serving knows."""
        everything = pd.concat([self.train, self.valid, self.test]).sort_values(["u", "t", ROW], kind="stable")
        empty = everything.iloc[:0]
        return Split(self.users, self.items, everything.reset_index(drop=True), empty, empty, self.context_columns)

    def targets(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        frame = self.stage_frame(stage)
        return frame["u"].to_numpy(), frame["i"].to_numpy()


def recent_items(frame: pd.DataFrame, n_users: int, max_len: int) -> np.ndarray:
    """[n_users, max_len] of each user's last items in canonical order, left-padded with -1."""
    users = frame["u"].to_numpy()
    from_end = frame.groupby("u", sort=False).cumcount(ascending=False).to_numpy()
    keep = from_end < max_len
    recent = np.full((n_users, max_len), -1, dtype=np.int32)
    recent[users[keep], max_len - 1 - from_end[keep]] = frame["i"].to_numpy()[keep]
    return recent


def interaction_matrix(frame: pd.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    data = np.ones(len(frame), dtype=np.float32)
    matrix = sp.csr_matrix((data, (frame["u"].to_numpy(), frame["i"].to_numpy())), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def canonical_order(interactions: pd.DataFrame) -> pd.DataFrame:
    """Stable sort by (user, time, file row), then keep each (user, item) pair's first occurrence."""
    frame = interactions.assign(**{ROW: np.arange(len(interactions), dtype=np.int64)})
    frame = frame.sort_values([USER, TIME, ROW], kind="stable")
    return frame.drop_duplicates([USER, ITEM], keep="first")


def temporal_split(dataset: Dataset) -> Split:
    frame = canonical_order(dataset.interactions)
    counts = frame.groupby(USER, sort=False)[ITEM].transform("size")
    frame = frame[counts.to_numpy() >= MIN_INTERACTIONS]
    if frame.empty:
        raise DataError(dataset.name, f"no user has {MIN_INTERACTIONS} or more distinct items; nothing to split")
    users = IdMap.from_values(frame[USER].to_numpy())
    item_values = frame[ITEM].to_numpy()
    if dataset.items is not None:
        item_values = np.concatenate([item_values, dataset.items[ITEM].to_numpy()])
    items = IdMap.from_values(item_values)
    mapped = pd.DataFrame({
        "u": users.to_index(frame[USER].to_numpy()).astype(np.int32),
        "i": items.to_index(frame[ITEM].to_numpy()).astype(np.int32),
        "t": frame[TIME].to_numpy(np.int64),
        ROW: frame[ROW].to_numpy(),
    })
    for column in dataset.context_columns:
        mapped[column] = frame[column].to_numpy()
    from_end = mapped.groupby("u", sort=False).cumcount(ascending=False).to_numpy()
    return Split(users, items,
                 train=mapped[from_end >= 2].reset_index(drop=True),
                 valid=mapped[from_end == 1].reset_index(drop=True),
                 test=mapped[from_end == 0].reset_index(drop=True),
                 context_columns=dataset.context_columns)
