"""The split follows PROTOCOL.md: sizes, no leakage, each user's test item is their last."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.data.datasets import Dataset
from recsys.data.loaders import validate_interactions
from recsys.split import temporal_split


def test_ml100k_sizes_match_protocol(ml100k_split):
    split = ml100k_split
    assert (split.n_users, split.n_items) == (943, 1682)
    assert len(split.train) == 98_114 and len(split.valid) == len(split.test) == 943


def test_no_leakage_and_test_is_last(ml100k_split):
    split = ml100k_split
    last_train = split.train.groupby("u")["t"].max()
    assert (split.valid.set_index("u")["t"] >= last_train.reindex(split.valid["u"]).to_numpy()).all()
    assert (split.test.set_index("u")["t"].sort_index() >= split.valid.set_index("u")["t"].sort_index()).all()
    pairs = pd.concat([split.train, split.valid, split.test])[["u", "i"]]
    assert not pairs.duplicated().any()
    assert split.history("test")[split.test["u"].to_numpy(), split.test["i"].to_numpy()].sum() == 0


def test_ties_break_by_file_order_dedup_keeps_first_and_short_users_drop():
    frame = pd.DataFrame({
        "user_id": ["a"] * 5 + ["b"] * 2,
        "item_id": ["x", "y", "z", "x", "w", "x", "y"],
        "timestamp": [1, 2, 2, 3, 0, 1, 2],
    })
    split = temporal_split(Dataset("tiny", validate_interactions(frame)))
    assert split.n_users == 1  # b has only 2 interactions
    external = split.items.to_external
    # canonical order for a: w(0), x(1), y(2), z(2, later row); the repeated x is dropped.
    assert external(split.train["i"]).tolist() == ["w", "x"]
    assert external(split.valid["i"]).tolist() == ["y"] and external(split.test["i"]).tolist() == ["z"]


def test_catalog_items_join_the_candidate_set(checkerboard):
    extra = checkerboard.items.iloc[:1].assign(item_id="never-seen")
    checkerboard.items = pd.concat([checkerboard.items, extra], ignore_index=True)
    split = temporal_split(checkerboard)
    assert "never-seen" in set(split.items.ids) and split.n_items == 21


def test_instacart_sizes_match_protocol(data_dir):
    from recsys.data.datasets import load_dataset

    split = temporal_split(load_dataset("instacart", data_dir))
    assert (split.n_users, split.n_items, len(split.train)) == (592, 14_190, 52_952)
    assert np.setdiff1d(split.test["i"], split.train["i"]).size > 0
