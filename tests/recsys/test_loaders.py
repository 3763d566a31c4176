"""Every bad-input case stops with one message naming the file, the column and a sample row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.data.idmap import IdMap
from recsys.data.loaders import load_log
from recsys.data.schema import DataError

GOOD = "user_id,item_id,timestamp\nalice,sku-1,100\nalice,sku-2,200\nbob,sku-1,150\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_csv_normalises_types(tmp_path):
    inter, items, users = load_log(write(tmp_path, "log.csv", GOOD))
    assert list(inter["user_id"]) == ["alice", "alice", "bob"]
    assert inter["timestamp"].dtype == np.int64
    assert items is None and users is None


def test_integer_ids_stay_integers_and_datetimes_become_seconds(tmp_path):
    text = "user_id,item_id,timestamp\n1,10,2024-01-01T00:00:00Z\n2,11,2024-01-01 00:00:01\n"
    inter, _, _ = load_log(write(tmp_path, "log.csv", text))
    assert inter["user_id"].dtype == np.int64
    assert list(inter["timestamp"]) == [1704067200, 1704067201]


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [5, 6], "weight": [1.0, 2.0]})
    path = tmp_path / "log.parquet"
    frame.to_parquet(path)
    inter, _, _ = load_log(path)
    assert list(inter["item_id"]) == ["a", "b"] and inter["weight"].dtype == np.float32


@pytest.mark.parametrize(
    ("text", "column", "needle"),
    [
        ("user,item_id,timestamp\na,b,1\n", "user_id", "did you mean 'user'"),
        ("user_id,item_id\na,b\n", "timestamp", "missing required column"),
        ("user_id,item_id,timestamp\na,b,yesterday-ish\n", "timestamp", "unparsable timestamp"),
        ("user_id,item_id,timestamp\na,,1\nb,c,2\n", "item_id", "missing (NaN) ids"),
        ("user_id,item_id,timestamp\na,b,1.5\n", "timestamp", "fractional"),
        ("user_id,item_id,timestamp,weight\na,b,1,-3\n", "weight", "non-negative"),
    ],
)
def test_bad_columns_are_named(tmp_path, text, column, needle):
    path = write(tmp_path, "log.csv", text)
    with pytest.raises(DataError) as err:
        load_log(path)
    message = str(err.value)
    assert str(path) in message and f"column '{column}'" in message and needle in message


def test_sample_row_is_shown(tmp_path):
    path = write(tmp_path, "log.csv", "user_id,item_id,timestamp\na,b,1\nc,d,not-a-time\n")
    with pytest.raises(DataError, match="row 2: .*not-a-time"):
        load_log(path)


def test_missing_file_empty_log_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_log(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="empty"):
        load_log(write(tmp_path, "empty.csv", "user_id,item_id,timestamp\n"))
    with pytest.raises(DataError, match="cannot be parsed"):
        load_log(write(tmp_path, "blank.csv", ""))
    with pytest.raises(DataError, match="unsupported file type"):
        load_log(write(tmp_path, "log.xlsx", GOOD))


def test_catalog_must_cover_the_log(tmp_path):
    log_path = write(tmp_path, "log.csv", GOOD)
    items = write(tmp_path, "items.csv", "item_id,title\nsku-1,Shirt\n")
    with pytest.raises(DataError) as err:
        load_log(log_path, items)
    assert "does not cover the log" in str(err.value) and "sku-2" in str(err.value)


def test_catalog_duplicates_are_refused(tmp_path):
    items = write(tmp_path, "items.csv", "item_id,title\nsku-1,A\nsku-2,B\nsku-1,C\n")
    with pytest.raises(DataError, match="duplicate item_id"):
        load_log(write(tmp_path, "log.csv", GOOD), items)


def test_user_table_and_catalog_load(tmp_path):
    items = write(tmp_path, "items.csv", "item_id,title,price\nsku-1,A,3.5\nsku-2,B,x\n")
    users = write(tmp_path, "users.csv", "user_id,age\nalice,30\nbob,40\n")
    _, item_table, user_table = load_log(write(tmp_path, "log.csv", GOOD), items, users)
    assert np.isnan(item_table["price"].iloc[1]) and len(user_table) == 2


@pytest.mark.parametrize("ids", [np.array([5, 1, 9], dtype=np.int64), np.array(["b", "a", "007"], dtype=object)])
def test_idmap_round_trips_exactly(tmp_path, ids):
    idmap = IdMap.from_values(ids)
    idx = idmap.to_index(ids)
    assert list(idmap.to_external(idx)) == list(ids)
    idmap.save(tmp_path / "ids.json")
    again = IdMap.load(tmp_path / "ids.json")
    assert again == idmap and list(again.to_external(again.to_index(ids))) == list(ids)


def test_idmap_unknown_and_coerced_ids():
    idmap = IdMap.from_values(np.array([3, 7]))
    assert list(idmap.to_index(["7", "x", "3"], missing=-1)) == [1, -1, 0]
    with pytest.raises(KeyError):
        idmap.to_index([4])
