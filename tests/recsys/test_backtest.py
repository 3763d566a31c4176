"""The backtest: a bundle scored on later events, each a request at its own time.

The known answer: the protocol's held-out rows, given as a later log, are exactly the requests
`recsys.evaluate` scores, so the backtest must reproduce its test metrics (and top-K lists).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.bundle.content import last_times
from recsys.data.datasets import Dataset, load_dataset
from recsys.evaluate.backtest import backtest, load_bundle, map_events, replay, split_rows_as_log
from recsys.evaluate.cli import main
from recsys.evaluate.metrics import topk_metrics
from recsys.evaluate.models import load_model
from recsys.evaluate.scoring import evaluate_model, recommend_for_stage
from recsys.pipeline.ranker_features import request_context
from recsys.pipeline.recommend import empty_history
from recsys.split import GATE_EVENTS, Split, temporal_split
from tests.fixtures.bundles import publish_tiny_bundle
from tests.fixtures.data import checkerboard_dataset

METRIC_KEYS = tuple(topk_metrics(np.full((2, 20), -1), np.zeros(2, np.int64), 1))


def forget_valid(served, split: Split) -> None:
    """Make a loaded holdout bundle know train only, so its valid and test rows are two later steps."""
    served.content.history = split.user_history("valid")
    served.content.last_time = last_times(split.train, split.n_users)


@pytest.fixture(scope="module")
def checkerboard_bundle(tmp_path_factory) -> Path:
    """Trained once per module: the tests only read it."""
    dataset = checkerboard_dataset()
    root = tmp_path_factory.mktemp("bundles")
    version = publish_tiny_bundle(root, dataset, temporal_split(dataset), seed=0, make_current=True)
    return root / "versions" / version


def test_held_out_rows_reproduce_evaluate(tmp_path, checkerboard_bundle, checkerboard_split, capsys):
    split = checkerboard_split
    expected, expected_topk = evaluate_model(load_model(str(checkerboard_bundle), split), split, "test")
    events = tmp_path / "later.csv"
    split_rows_as_log(split, split.test).to_csv(events, index=False)
    out = tmp_path / "backtest.json"

    assert main(["--model", str(checkerboard_bundle), "--events", str(events), "--json", str(out)]) == 0

    assert "| backtest bundle teacher " in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert {key: got[key] for key in METRIC_KEYS} == {key: expected[key] for key in METRIC_KEYS}
    assert got["events"] == got["users"] == split.n_users and got["unknown_users"] == got["unknown_item_events"] == 0
    assert got["at_or_before_cutoff"] == 0 and "backtest bundle teacher" in got["label"]
    result = backtest(load_bundle(checkerboard_bundle), pd.read_csv(events))
    np.testing.assert_array_equal(result.topk, expected_topk)


def assert_later_steps_fold_in_earlier_events(bundle: Path, split: Split) -> None:
    """A bundle that knows train only, given valid + test rows: step 1 has the valid item in its history."""
    model = load_model(str(bundle), split)
    served = load_bundle(bundle)
    forget_valid(served, split)

    result = backtest(served, split_rows_as_log(split, pd.concat([split.valid, split.test])))

    n = len(split.valid)
    np.testing.assert_array_equal(result.topk[:n], recommend_for_stage(model, split, "valid"))
    np.testing.assert_array_equal(result.topk[n:], recommend_for_stage(model, split, "test"))


def test_later_steps_fold_in_earlier_events(checkerboard_bundle, checkerboard_split):
    assert_later_steps_fold_in_earlier_events(checkerboard_bundle, checkerboard_split)


def test_unknown_user_folds_in_and_unknown_item_is_a_miss(checkerboard_bundle, caplog):
    served = load_bundle(checkerboard_bundle)
    items = served.content.items
    later = pd.DataFrame({"user_id": ["new", "new", "new", "new"], "item_id": ["i0", "i1", "no-such-item", "i2"],
                          "timestamp": [5_000, 5_001, 5_002, 5_003]})

    with caplog.at_level(logging.INFO, logger="recsys.evaluate.backtest"):
        result = backtest(served, later)

    assert result.fallback.tolist() == [True, False, False, False]  # popular only before any history
    seen = [[], ["i0"], ["i0", "i1"], ["i0", "i1"]]  # the unknown item never joins the history
    for row, history in enumerate(seen):
        listed = result.topk[row][result.topk[row] >= 0]
        assert not set(items.to_index(history).tolist()) & set(listed.tolist())
        assert len(listed) == len(items) - len(history)
    # The fold-in is what the serving API does with a request's new items.
    pipeline = served.recommender().pipeline
    served_ids, _, fallback = pipeline.recommend_external(["new"], 20, new_items=[["i0"]],
                                                          n_candidates=served.n_candidates)
    assert not fallback[0]
    served_list = [item for item in served_ids[0].tolist() if item is not None]
    np.testing.assert_array_equal(items.to_index(served_list), result.topk[1][result.topk[1] >= 0])
    assert result.counts["unknown_users"] == 1 and result.counts["unknown_user_events"] == 4
    assert result.counts["unknown_item_events"] == 1 and result.counts["at_or_before_cutoff"] == 0
    assert result.metrics["events"] == 4 and result.metrics["users"] == 1
    assert "1 users (4 events) are unknown" in caplog.text


def test_events_at_or_before_the_cutoff_are_scored_and_counted(checkerboard_bundle, checkerboard_split, caplog):
    served = load_bundle(checkerboard_bundle)
    cutoff = served.runtime["data"]["cutoff"]
    later = split_rows_as_log(checkerboard_split, checkerboard_split.test).assign(timestamp=0)

    with caplog.at_level(logging.WARNING, logger="recsys.evaluate.backtest"):
        result = backtest(served, later)

    assert result.counts["at_or_before_cutoff"] == len(later) and result.counts["cutoff"] == cutoff
    assert "before their user's last interaction in the bundle" in caplog.text


def test_a_repeat_of_a_seen_item_is_a_miss(checkerboard_bundle, checkerboard_split):
    split = checkerboard_split
    later = split_rows_as_log(split, split.train.groupby("u").head(1))

    result = backtest(load_bundle(checkerboard_bundle), later)

    assert result.counts["repeat_events"] == len(later) and result.metrics["HR@20"] == 0.0


class RecordingPipeline:
    """Stands in for `Pipeline.recommend_rows`: records each batch's users, history rows and context."""

    batch_size = 7

    def __init__(self, n_items: int):
        self.n_items = n_items
        self.calls = []

    def recommend_rows(self, users, rows, k, exclude_seen=True, exclude=None, n_candidates=200, context=None):
        self.calls.append((users, rows, context))
        return np.full((len(users), k), -1), np.zeros((len(users), k)), np.zeros(len(users), bool)


def test_request_context_is_evaluations(checkerboard):
    """Time, last time and context columns exactly as `ranker_features.request_context` gives evaluation."""
    rng = np.random.default_rng(0)
    frame = checkerboard.interactions.assign(order_dow=rng.integers(0, 7, len(checkerboard.interactions)))
    frame.loc[(frame["user_id"] == "u0") & (frame["timestamp"] == frame["timestamp"].max()), "order_dow"] = np.nan
    split = temporal_split(Dataset("ctx", frame, checkerboard.items, context_columns=("order_dow",)))
    events = map_events(split_rows_as_log(split, split.test), split.users, split.items, ("order_dow",))
    pipeline = RecordingPipeline(split.n_items)
    history = split.user_history("test")

    replay(pipeline, history, events, last_times(split.history_frame("test"), split.n_users), n_candidates=200)

    expected = request_context(split, "test")
    assert np.isnan(expected["order_dow"]).sum() == 1  # a missing value travels as NaN on both paths
    got = {name: np.concatenate([call[2][name] for call in pipeline.calls]) for name in expected}
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    users = np.concatenate([call[0] for call in pipeline.calls])
    np.testing.assert_array_equal(users, split.test["u"].to_numpy())
    recent = np.vstack([call[1].recent for call in pipeline.calls])
    np.testing.assert_array_equal(recent, history.recent)


def test_a_missing_context_column_warns(checkerboard_split, caplog):
    split = checkerboard_split
    with caplog.at_level(logging.WARNING, logger="recsys.evaluate.backtest"):
        events = map_events(split_rows_as_log(split, split.test), split.users, split.items, ("order_dow",))
    assert events.context == {} and "order_dow" in caplog.text


def test_steps_follow_time_then_file_order(checkerboard_split):
    """Two events of a user at the same second: the file's first is the earlier step."""
    split = checkerboard_split
    later = pd.DataFrame({"user_id": ["u0", "u0", "u0"], "item_id": ["i9", "i8", "i7"], "timestamp": [9, 7, 7]})
    events = map_events(later, split.users, split.items)
    pipeline = RecordingPipeline(split.n_items)

    replay(pipeline, empty_history(split.n_users, split.n_items, 4), events, None, n_candidates=200)

    last = [call[1].recent[0][call[1].recent[0] >= 0].tolist() for call in pipeline.calls]
    i7, i8 = split.items.to_index(["i7", "i8"])
    assert last == [[], [i8], [i8, i7]]
    assert [call[2]["last_timestamp"][0] for call in pipeline.calls] == [-1, 7, 7]


def test_bad_later_logs_are_clear_errors(tmp_path, checkerboard_bundle, capsys):
    missing_column = tmp_path / "bad.csv"
    pd.DataFrame({"user": ["u0"], "item_id": ["i0"], "timestamp": [1]}).to_csv(missing_column, index=False)
    cases = [(missing_column, "missing required column"), (tmp_path / "absent.csv", "file not found")]
    for path, needle in cases:
        assert main(["--model", str(checkerboard_bundle), "--events", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err


@pytest.mark.parametrize("model", ["pop", "/"])
def test_events_need_a_bundle(tmp_path, model, capsys):
    events = tmp_path / "later.csv"
    pd.DataFrame({"user_id": ["u0"], "item_id": ["i0"], "timestamp": [1]}).to_csv(events, index=False)
    assert main(["--model", model, "--events", str(events)]) == 2
    assert "--model must be a bundle directory" in capsys.readouterr().err


def test_dataset_is_still_required_without_events(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "pop"])
    assert exit_info.value.code == 2 and "--dataset" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Trained + compressed tiny bundles with a ranker and its feature tables (slow tier)


@pytest.fixture(scope="module")
def tiny_split(tiny) -> Split:
    """The split the tiny bundles' models were trained and measured on (`recsys.train --held-out`)."""
    return temporal_split(load_dataset(str(tiny.interactions), tiny.root, str(tiny.items)), GATE_EVENTS)


@pytest.mark.parametrize("kind", ["teacher", "compressed"])
def test_held_out_rows_reproduce_evaluate_with_a_ranker(tiny, tiny_split, kind, tmp_path, capsys):
    measured = tiny.bundles / "holdout" / kind
    served = load_bundle(measured)
    assert served.recommender().pipeline.has_ranker
    events = tmp_path / "later.parquet"
    split_rows_as_log(tiny_split, tiny_split.test).to_parquet(events, index=False)
    evaluated, backtested = tmp_path / "evaluate.json", tmp_path / "backtest.json"

    assert main([*tiny.data_args(), "--model", str(measured), "--held-out", str(GATE_EVENTS),
                 "--json", str(evaluated)]) == 0
    assert main(["--model", str(measured), "--events", str(events), "--json", str(backtested)]) == 0

    expected, got = json.loads(evaluated.read_text()), json.loads(backtested.read_text())
    capsys.readouterr()
    logging.getLogger(__name__).info("%s: evaluate NDCG@10 %.6f, backtest NDCG@10 %.6f", kind, expected["NDCG@10"],
                                     got["NDCG@10"])
    assert {key: got[key] for key in METRIC_KEYS} == {key: expected[key] for key in METRIC_KEYS}
    assert got["events"] == tiny_split.n_users and got["unknown_users"] == 0


@pytest.mark.parametrize("kind", ["teacher", "compressed"])
def test_later_steps_fold_in_earlier_events_with_a_ranker(tiny, tiny_split, kind):
    assert_later_steps_fold_in_earlier_events(tiny.bundles / "holdout" / kind, tiny_split)
