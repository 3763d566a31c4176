"""Merging the base log with stored feedback events, on known inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ops.merge import merge_events, write_log
from recsys.data.datasets import Dataset, load_dataset
from recsys.data.loaders import validate_interactions, validate_items, validate_users


def base(ids_as_text: bool = False) -> Dataset:
    users = ["u1", "u2"] if ids_as_text else [1, 2]
    items = ["i10", "i11", "i12"] if ids_as_text else [10, 11, 12]
    log = pd.DataFrame({"user_id": [users[0], users[0], users[1]], "item_id": items,
                        "timestamp": [100, 200, 150]})
    catalog = pd.DataFrame({"item_id": items, "title": ["a", "b", "c"], "year": [1990.0, 1991.0, 1992.0]})
    people = pd.DataFrame({"user_id": users, "gender": ["F", "M"]})
    return Dataset("shop", validate_interactions(log), validate_items(catalog), validate_users(people))


def events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    frame["event"], frame["weight"] = "click", 1.0
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="id")
    return frame


def test_integer_events_join_an_integer_log():
    merged = merge_events(base(), events([("1", "11", 300), ("7", "10", 301), ("2", "99", 302)]))
    inter = merged.interactions
    assert len(inter) == 6 and (merged.n_base, merged.n_events, merged.new_users, merged.new_items) == (3, 3, 1, 1)
    assert inter["user_id"].dtype == np.int64 and inter["item_id"].dtype == np.int64
    assert inter["user_id"].tolist() == [1, 1, 2, 1, 7, 2]  # base first, then events in store order
    assert inter["event"].tolist() == ["interaction"] * 3 + ["click"] * 3
    assert 99 in merged.items["item_id"].tolist() and 7 in merged.users["user_id"].tolist()
    new_item = merged.items.set_index("item_id").loc[99]
    assert new_item["title"] == "" and np.isnan(new_item["year"])


def test_non_integer_event_ids_turn_the_column_into_text_everywhere():
    merged = merge_events(base(), events([("visitor-ab", "x-1", 300)]))
    assert merged.interactions["user_id"].tolist() == ["1", "1", "2", "visitor-ab"]
    assert merged.interactions["item_id"].tolist() == ["10", "11", "12", "x-1"]
    assert merged.items["item_id"].tolist() == ["10", "11", "12", "x-1"]
    assert merged.users["user_id"].tolist() == ["1", "2", "visitor-ab"]


def test_no_events_leaves_the_base_log_and_its_fingerprint(tmp_path):
    dataset = base()
    merged = merge_events(dataset, events([]))
    assert merged.n_events == 0 and merged.interactions.equals(dataset.interactions)
    files = write_log(merged, tmp_path, dataset.name)
    reloaded = load_dataset(str(files.interactions), tmp_path, files.items, files.users)
    assert reloaded.name == "shop" and reloaded.fingerprint() == dataset.fingerprint()


def test_written_log_loads_back_with_new_ids_covered(tmp_path):
    merged = merge_events(base(ids_as_text=True), events([("u3", "i99", 500), ("u1", "i10", 501)]))
    files = write_log(merged, tmp_path, "shop")
    reloaded = load_dataset(str(files.interactions), tmp_path, files.items, files.users)
    assert len(reloaded.interactions) == 5
    assert files.dataset_args() == ["--dataset", str(files.interactions), "--items", str(files.items),
                                    "--users", str(files.users)]
