"""Temporal leave-one-out split, exactly as ../shared/PROTOCOL.md defines it, and its gate variant.

`Split.holding_out(k)` keeps each user's last k interactions out of training (PROTOCOL.md, "Noise"):
the quality gate scores them one step at a time (`gate_events`), so it decides on k times the
protocol's evidence; the protocol's own numbers (k = 1) stay what `recsys.evaluate` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.data.datasets import Dataset
from recsys.data.history import History
from recsys.data.idmap import IdMap
from recsys.data.schema import ITEM, TIME, USER, DataError

MIN_INTERACTIONS = 3
MAX_RECENT = 50
# Each user's last GATE_EVENTS interactions are held out of training by default for the quality
# gate (reports/compression/gate_power.md has the power calculation behind the number).
GATE_EVENTS = 5
ROW = "row"


@dataclass
class Split:
    """Index-mapped frames (columns ``u``, ``i``, ``t`` + context) in canonical order.

    ``test`` holds each user's first held-out interaction; ``later`` the ones after it when more
    than one is held out (`holding_out`), empty under the protocol."""

    users: IdMap
    items: IdMap
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    context_columns: tuple[str, ...] = ()
    later: pd.DataFrame | None = None

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
        return canonical(pd.concat([self.train, self.valid]))

    def history(self, stage: str) -> sp.csr_matrix:
        """Binary user x item matrix of the history (also the items excluded when scoring)."""
        return interaction_matrix(self.history_frame(stage), self.n_users, self.n_items)

    def user_history(self, stage: str, max_len: int = MAX_RECENT) -> History:
        """Seen set + the ``max_len`` most recent items of every user, as known when scoring ``stage``."""
        frame = self.history_frame(stage)
        return History(interaction_matrix(frame, self.n_users, self.n_items),
                       recent_items(frame, self.n_users, max_len))

    def everything(self) -> pd.DataFrame:
        """Every interaction of the split, in canonical order."""
        frames = [self.train, self.valid, self.test, *([self.later] if self.later is not None else [])]
        return canonical(pd.concat(frames))

    def whole(self) -> Split:
        """Every interaction as train, nothing held out: what a bundle published for serving knows."""
        everything = self.everything()
        empty = everything.iloc[:0]
        return Split(self.users, self.items, everything, empty, empty, self.context_columns)

    @property
    def held_out_events(self) -> int:
        """How many of each user's last interactions this split holds out (at most; 1 = the protocol)."""
        if self.later is None or self.later.empty:
            return 1
        return 1 + int(self.later.groupby("u", sort=False).size().max())

    def gate_events(self) -> pd.DataFrame:
        """The held-out interactions (test, then later), canonical order: scored one step at a time."""
        return canonical(pd.concat([self.test, *([self.later] if self.later is not None else [])]))

    def holding_out(self, k: int) -> Split:
        """This split's interactions with each user's last ``k`` held out instead of the last one
        (fewer for a user with fewer than k + 2: at least one train and one validation row stay):
        the one before them is validation, the first of them ``test``, the rest ``later``."""
        if k < 1:
            raise ValueError(f"held-out events must be >= 1, got {k}")
        everything = self.everything()
        from_end = everything.groupby("u", sort=False).cumcount(ascending=False).to_numpy()
        size = everything.groupby("u", sort=False)["i"].transform("size").to_numpy()
        held = np.minimum(k, size - 2)

        def rows(mask: np.ndarray) -> pd.DataFrame:
            return everything[mask].reset_index(drop=True)

        return replace(self, train=rows(from_end > held), valid=rows(from_end == held),
                       test=rows(from_end == held - 1), later=rows(from_end < held - 1))

    def targets(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        frame = self.stage_frame(stage)
        return frame["u"].to_numpy(), frame["i"].to_numpy()


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["u", "t", ROW], kind="stable").reset_index(drop=True)


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


def temporal_split(dataset: Dataset, held_out: int = 1) -> Split:
    """The protocol's split (``held_out`` 1), or its gate variant (`Split.holding_out`)."""
    split = protocol_split(dataset)
    return split if held_out == 1 else split.holding_out(held_out)


def protocol_split(dataset: Dataset) -> Split:
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
