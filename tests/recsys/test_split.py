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


def test_holding_out_k_events_keeps_them_out_of_train_and_valid(ml100k_split):
    gate = ml100k_split.holding_out(5)
    assert gate.held_out_events == 5 and ml100k_split.held_out_events == 1
    assert len(gate.test) == len(gate.valid) == 943 and len(gate.later) == 4 * 943  # every user has >= 20
    assert len(gate.train) == 98_114 - 4 * 943
    events = gate.gate_events()
    assert len(events) == 5 * 943 and events.groupby("u").size().eq(5).all()
    # The protocol's test row is each user's last gate event; nothing is lost or doubled.
    assert events.groupby("u").tail(1)[["u", "i"]].reset_index(drop=True).equals(
        ml100k_split.test[["u", "i"]].reset_index(drop=True))
    assert gate.everything()[["u", "i"]].equals(ml100k_split.everything()[["u", "i"]])
    assert len(gate.whole().train) == 100_000
    last_known = gate.history_frame("test").groupby("u")["t"].max()
    assert (events.groupby("u")["t"].min() >= last_known).all()
    back = gate.holding_out(1)
    for part in ("train", "valid", "test"):
        assert getattr(back, part)[["u", "i"]].equals(getattr(ml100k_split, part)[["u", "i"]])


def test_holding_out_leaves_a_short_user_one_train_and_one_valid_row():
    frame = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 9, "item_id": [f"i{n}" for n in range(13)],
                          "timestamp": list(range(4)) + list(range(9))})
    gate = temporal_split(Dataset("tiny", validate_interactions(frame)), held_out=5)
    sizes = {user: frame.groupby("u").size().to_dict() for user, frame in (("train", gate.train),
                                                                          ("later", gate.later))}
    a, b = gate.users.to_index(np.array(["a", "b"]))
    assert sizes["train"] == {a: 1, b: 3} and sizes["later"] == {a: 1, b: 4}
    assert len(gate.valid) == len(gate.test) == 2
    back = gate.holding_out(1)
    assert len(back.train) == 2 + 7 and back.later.empty and gate.holding_out(5).train.equals(gate.train)
