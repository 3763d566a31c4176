"""The out-of-core pipeline gives the in-memory answers: the same split row for row, the same
training examples, the same validation errors (recsys.outofcore against recsys.split,
recsys.train.towers and recsys.data.loaders, on the same files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.datasets import Dataset, load_dataset
from recsys.data.loaders import validate_interactions
from recsys.data.schema import DataError
from recsys.data.synthetic import SyntheticConfig, generate
from recsys.outofcore import load_examples, read_split
from recsys.outofcore.cli import RECORD, main, parse_args, run
from recsys.outofcore.examples import DEFAULT_HISTORY_LEN, window_stride
from recsys.split import Split, temporal_split
from tests.fixtures.data import checkerboard_dataset

# Small enough for a fast test, yet several chunks, sessions with cart/purchase repeats (duplicates).
SYNTHETIC = SyntheticConfig(n_users=300, n_items=400, n_interactions=5_000, n_categories=8, seed=3,
                            users_per_chunk=100)


def run_outofcore(log: Path, out: Path, items: Path | None = None) -> dict:
    """The CLI's steps (a DataError propagates); the record it wrote."""
    argv = ["--log", str(log), "--out", str(out), "--memory-limit", "256MB", "--threads", "1", "--no-progress"]
    run(parse_args([*argv, *(["--items", str(items)] if items else [])]))
    return json.loads((out / RECORD).read_text())


def assert_same_split(expected: Split, actual: Split) -> None:
    assert actual.users == expected.users and actual.items == expected.items
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(actual, part), getattr(expected, part)[["u", "i", "t", "row"]])


def assert_same_examples(expected: Split, out: Path) -> None:
    from recsys.models.two_tower import TwoTowerConfig
    from recsys.train.towers import SequenceWindows

    assert TwoTowerConfig(n_users=1, n_items=1).history_len == DEFAULT_HISTORY_LEN
    windows = SequenceWindows(expected, DEFAULT_HISTORY_LEN)
    assert window_stride(DEFAULT_HISTORY_LEN) == windows.stride
    examples = load_examples(out)
    for name, wanted in (("users", windows.users), ("items", windows.items), ("position", windows.position),
                         ("log_q", windows.log_q.numpy()), ("window_ends", windows.ends)):
        np.testing.assert_array_equal(examples[name], wanted, err_msg=name)
    assert examples["meta"]["rows"] == len(expected.train)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def test_checkerboard_split_and_examples_equal_the_in_memory_ones(tmp_path):
    board = checkerboard_dataset()
    log = write_parquet(board.interactions, tmp_path / "board.parquet")
    items = write_parquet(board.items, tmp_path / "items.parquet")
    record = run_outofcore(log, tmp_path / "out", items)
    expected = temporal_split(board)
    assert_same_split(expected, read_split(tmp_path / "out"))
    assert_same_examples(expected, tmp_path / "out")
    assert record["users"] == 40 and record["rows"]["test"] == 40


@pytest.fixture(scope="module")
def tied_log(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """A synthetic log made harder: timestamps cut to 10-minute steps (ties inside sessions),
    rows shuffled (file order is not time order, so the tie-break decides), short users added."""
    root = tmp_path_factory.mktemp("tied")
    paths = generate(SYNTHETIC, root / "synthetic", progress=False)
    frame = pd.read_parquet(paths.interactions)
    frame["timestamp"] = frame["timestamp"] // 600 * 600
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    t0 = int(frame["timestamp"].min())
    short = pd.DataFrame({"user_id": [9_001, 9_001, 9_002, 9_002, 9_002, 9_003],
                          "item_id": [1, 2, 5, 5, 5, 7],  # two items; one item three times; one row
                          "timestamp": [t0, t0, t0, t0 + 1, t0, t0], "event": "view"})
    frame = pd.concat([frame.iloc[:2000], short, frame.iloc[2000:]], ignore_index=True)
    return write_parquet(frame, root / "tied.parquet"), paths.items, frame


def test_the_tied_log_has_the_edge_cases(tied_log):
    _, _, frame = tied_log
    same_time = frame.duplicated(["user_id", "timestamp"], keep=False)
    assert same_time.mean() > 0.3  # many same-time rows within a user
    assert frame.duplicated(["user_id", "item_id"]).sum() > 100  # repeats to de-duplicate


def test_synthetic_log_with_ties_and_short_users_equals_the_in_memory_split(tied_log, tmp_path):
    log, items, frame = tied_log
    record = run_outofcore(log, tmp_path / "out", items)
    expected = temporal_split(load_dataset(str(log), items=items))
    assert_same_split(expected, read_split(tmp_path / "out"))
    assert_same_examples(expected, tmp_path / "out")
    assert expected.n_users < frame["user_id"].nunique()  # short users were dropped, here as there
    assert not {9_001, 9_002, 9_003} & set(expected.users.ids.tolist())
    assert record["users"] == expected.n_users and record["items"] == SYNTHETIC.n_items  # the catalog's items
    assert record["dropped_users"] == frame["user_id"].nunique() - expected.n_users


def test_csv_with_date_time_strings_equals_the_in_memory_split(tied_log, tmp_path):
    _, _, frame = tied_log
    text = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    log = tmp_path / "log.csv"
    text.to_csv(log, index=False)
    run_outofcore(log, tmp_path / "out")
    expected = temporal_split(load_dataset(str(log)))
    assert_same_split(expected, read_split(tmp_path / "out"))


def test_string_ids_ties_and_duplicates_as_in_test_split(tmp_path):
    frame = pd.DataFrame({"user_id": ["a"] * 5 + ["b"] * 2 + [" c"] * 3, "item_id": ["x", "y", "z", "x", "w", "x",
                                                                                      "y", "x ", "y", "q"],
                          "timestamp": [1, 2, 2, 3, 0, 1, 2, 5, 5, 5]})
    log = tmp_path / "log.csv"
    frame.to_csv(log, index=False)
    run_outofcore(log, tmp_path / "out")
    split = read_split(tmp_path / "out")
    assert_same_split(temporal_split(Dataset("log", validate_interactions(frame))), split)
    # canonical order for a: w(0), x(1), y(2), z(2, later row); the repeated x is dropped; "c" is trimmed.
    assert split.items.to_external(split.train["i"]).tolist()[:2] == ["w", "x"]
    assert split.users.ids.tolist() == ["a", "c"]


def test_ml100k_equals_the_in_memory_split(ml100k, ml100k_split, tmp_path):  # slow: a real dataset
    log = write_parquet(ml100k.interactions, tmp_path / "ml100k.parquet")
    items = write_parquet(ml100k.items[["item_id"]], tmp_path / "items.parquet")
    record = run_outofcore(log, tmp_path / "out", items)
    assert_same_split(ml100k_split, read_split(tmp_path / "out"))
    assert_same_examples(ml100k_split, tmp_path / "out")
    assert (record["users"], record["items"], record["rows"]["train"]) == (943, 1682, 98_114)


def test_the_record_says_what_was_done_and_the_spill_directory_is_gone(tied_log, tmp_path):
    log, _, frame = tied_log
    record = run_outofcore(log, tmp_path / "out")
    assert record["rows"]["rows"] == len(frame)
    assert set(record["steps"]) == {"fingerprint", "validate", "split", "examples"}
    assert all(step["seconds"] >= 0 for step in record["steps"].values())
    assert record["peak_rss_mb"] > 50 and record["versions"]["duckdb"]
    assert len(record["input"]["log"]["sha256"]) == 64 and record["settings"]["memory_limit"] == "256MB"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["examples", "outofcore.json", "split"]


GOOD = "user_id,item_id,timestamp\nalice,sku-1,100\nalice,sku-2,200\nbob,sku-1,150\n"


def in_memory_error(log: Path, items: Path | None) -> DataError:
    with pytest.raises(DataError) as err:
        temporal_split(load_dataset(str(log), items=items))
    return err.value


@pytest.mark.parametrize(
    ("name", "text", "column", "needle"),
    [
        ("log.csv", "user,item_id,timestamp\na,b,1\n", "user_id", "did you mean 'user'"),
        ("log.csv", "user_id,item_id\na,b\n", "timestamp", "missing required column"),
        ("log.csv", "user_id,item_id,timestamp\na,b,yesterday-ish\n", "timestamp", "unparsable timestamp"),
        ("log.csv", "user_id,item_id,timestamp\na,b,1\nc,d,not-a-time\ne,f,3\n", "timestamp", "unparsable timestamp"),
        ("log.csv", "user_id,item_id,timestamp\na,,1\nb,c,2\n", "item_id", "missing (NaN) ids"),
        ("log.csv", "user_id,item_id,timestamp\na,b,1\n,c,2\n", "user_id", "missing (NaN) ids"),
        ("log.csv", "user_id,item_id,timestamp\na,b,1\nb,c,\n", "timestamp", "missing timestamps"),
        ("log.csv", "user_id,item_id,timestamp\na,b,1.5\n", "timestamp", "fractional"),
        ("log.csv", "user_id,item_id,timestamp\na, ,1\n", "item_id", "ids must be 1..256 characters"),
        ("log.csv", "user_id,item_id,timestamp,weight\na,b,1,-3\n", "weight", "non-negative"),
        ("log.csv", "user_id,item_id,timestamp\n", None, "the interaction log is empty"),
        ("log.csv", "", None, "cannot be parsed"),
        ("log.xlsx", GOOD, None, "unsupported file type"),
        ("log.csv", GOOD, None, "nothing to split"),
    ],
)
def test_validation_errors_name_the_fault_as_loaders_do(tmp_path, name, text, column, needle):
    log = tmp_path / name
    log.write_text(text)
    with pytest.raises(DataError) as err:
        run_outofcore(log, tmp_path / "out")
    ours, theirs = err.value, in_memory_error(log, None)
    assert needle in str(ours) and ours.column == column
    assert (ours.path, ours.problem.split(":")[0], ours.column) == (theirs.path, theirs.problem.split(":")[0],
                                                                    theirs.column)
    # The same first offending row (a CSV's cells are shown as text here, typed there).
    assert (ours.sample or "").split(":")[0] == (theirs.sample or "").split(":")[0]


@pytest.mark.parametrize(
    ("frame", "column", "needle"),
    [
        (pd.DataFrame({"user_id": [1.0, None], "item_id": [1, 2], "timestamp": [1, 2]}), "user_id", "missing (NaN)"),
        (pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, np.nan]}), "timestamp", "missing"),
        (pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, 2.5]}), "timestamp", "fractional"),
        (pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b" * 300], "timestamp": [1, 2]}), "item_id", "1..256"),
        (pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": ["2024-01-01", "soon"]}), "timestamp",
         "unparsable"),
    ],
)
def test_parquet_faults_are_named_too(tmp_path, frame, column, needle):
    log = write_parquet(frame, tmp_path / "log.parquet")
    with pytest.raises(DataError) as err:
        run_outofcore(log, tmp_path / "out")
    theirs = in_memory_error(log, None)
    assert needle in str(err.value) and err.value.column == column
    # The same first offending row; pandas shows a row of ints and floats all as floats.
    assert (err.value.problem, err.value.sample.split(":")[0]) == (theirs.problem, theirs.sample.split(":")[0])


@pytest.mark.parametrize(
    ("catalog", "needle"),
    [
        ("item_id,title\nsku-1,a\nsku-1,b\nsku-2,c\n", "duplicate item_id"),
        ("item_id,title\nsku-1,a\n", "does not cover the log: 1 item_ids"),
        ("item_id,title\n1,a\n2,b\n", "types differ between log (object) and table (int64)"),
        ("id,title\nsku-1,a\n", "missing required column"),
    ],
)
def test_catalog_faults_are_named(tmp_path, catalog, needle):
    log = tmp_path / "log.csv"
    log.write_text(GOOD)
    items = tmp_path / "items.csv"
    items.write_text(catalog)
    with pytest.raises(DataError) as err:
        run_outofcore(log, tmp_path / "out", items)
    theirs = in_memory_error(log, items)
    assert needle in str(err.value) and err.value.column == "item_id"
    assert (err.value.path, err.value.problem) == (theirs.path, theirs.problem)


def test_cli_exit_code_and_message_for_bad_data(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\na,b,1.5\n")
    assert main(["--log", str(log), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "fractional timestamps" in capsys.readouterr().err


def test_a_chunk_size_smaller_than_the_log_changes_nothing(tied_log, tmp_path):
    from recsys.outofcore.examples import build_examples

    log, _, _ = tied_log
    run_outofcore(log, tmp_path / "out")
    whole = {name: np.array(array) for name, array in load_examples(tmp_path / "out").items() if name != "meta"}
    build_examples(tmp_path / "out", batch_rows=97)
    for name, array in load_examples(tmp_path / "out").items():
        if name != "meta":
            np.testing.assert_array_equal(array, whole[name], err_msg=name)


def test_a_different_history_length_gives_the_trainers_windows(tied_log, tmp_path):
    from recsys.outofcore.examples import build_examples
    from recsys.train.towers import SequenceWindows

    log, items, _ = tied_log
    run_outofcore(log, tmp_path / "out", items)
    expected = temporal_split(load_dataset(str(log), items=items))
    for history_len in (1, 2, 7):
        build_examples(tmp_path / "out", history_len)
        np.testing.assert_array_equal(load_examples(tmp_path / "out")["window_ends"],
                                      SequenceWindows(expected, history_len).ends)

