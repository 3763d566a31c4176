"""The replica drill's bookkeeping (benchmarks/bench_replicas.py): each bar fails when its measurement
is off, events are found in a merged log by (user, item, timestamp), switch times are read from
the version samples, the replayed interactions are the log's newest, and the drill publishes into a
copy of its start bundles, never into them."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from benchmarks.bench_replicas import (
    Timeline,
    bars,
    copy_served,
    hold_back,
    markdown,
    missing_from_log,
    switch_times,
    timeline_json,
)
from recsys.bundle.publish import current_version, resolve_bundle


def good_result() -> dict:
    markers = [{"user": "7", "item": "42", "timestamp": 1764650000, "event_id": "drill-1-r0", "status": 202},
               {"user": "7", "item": "42", "timestamp": 1764650001, "event_id": "drill-1-r1", "status": 202}]
    return {
        "dataset": "ml-100k", "replicas": 2, "users": 10, "rate_per_user": 3.0,
        "locust": {"by_name": {"Aggregated": {"requests": 5000, "failures": 0, "p50_ms": 4.0, "p99_ms": 30.0}},
                   "history": []},
        "replay": {"posted": 600, "answered_202": 600, "n_failed": 0, "failed": [], "stored": 600,
                   "rate_per_s": 1.5, "held_back": 3000},
        "gate_threshold": 0.9,
        "capacity": {"samples": 900, "min_up": 1, "samples_by_up": {1: 40, 2: 860}, "bar_min_up": 1},
        "retrains": [{"retrain": 1, "exit": 0, "seconds": 480.0, "before": "v1", "published": "v2",
                      "events_merged": 120, "events_in_store_at_start": 110, "switch_s": [1.5, 3.2],
                      "all_replicas_serve_it": True, "markers": markers,
                      "markers_stored": {"drill-1-r0": 1, "drill-1-r1": 1},
                      "markers_in_merged_log": {"drill-1-r0": True, "drill-1-r1": True},
                      "replayed_before_start": 360, "replayed_missing_from_log": 0}],
    }


def failed(result: dict) -> list[str]:
    return [bar["bar"] for bar in bars(result) if not bar["passed"]]


def test_a_clean_drill_passes_every_bar():
    assert failed(good_result()) == []


@pytest.mark.parametrize(("path", "value", "bar"), [
    (("locust", "by_name", "Aggregated", "failures"), 1, "zero failed requests"),
    (("locust", "by_name", "Aggregated", "requests"), 0, "zero failed requests"),
    (("retrains", 0, "exit"), 1, "make retrain published"),
    (("retrains", 0, "published"), "v1", "make retrain published"),
    (("retrains", 0, "switch_s"), [1.5, 12.0], "every replica serves"),
    (("retrains", 0, "switch_s"), [1.5, None], "every replica serves"),
    (("retrains", 0, "all_replicas_serve_it"), False, "every replica serves"),
    (("capacity", "min_up"), 0, "HAProxy never has fewer"),
    (("retrains", 0, "markers_stored", "drill-1-r1"), 2, "in PostgreSQL exactly once"),
    (("retrains", 0, "markers_stored", "drill-1-r1"), 0, "in PostgreSQL exactly once"),
    (("retrains", 0, "markers_in_merged_log", "drill-1-r0"), False, "next retrain"),
    (("retrains", 0, "events_merged"), 100, "next retrain"),
    (("retrains", 0, "replayed_missing_from_log"), 1, "next retrain"),
    (("retrains", 0, "replayed_before_start"), 0, "next retrain"),
    (("replay", "n_failed"), 1, "zero failed requests"),
    (("retrains", 0, "markers", 1, "status"), 503, "zero failed requests"),
    (("replay", "stored"), 599, "in PostgreSQL exactly once"),
    (("replay", "answered_202"), 0, "in PostgreSQL exactly once"),
])
def test_each_bar_fails_when_its_measurement_is_off(path, value, bar):
    result = copy.deepcopy(good_result())
    target = result
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert [name for name in failed(result) if bar in name], f"{path} = {value!r} passed every bar"
    assert "**no**" in markdown({**result, "bars": bars(result)})


def test_events_are_found_in_the_merged_log_by_user_item_and_time(tmp_path):
    log = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": [7, 7, 8], "item_id": [42, 42, 42], "timestamp": [1764650000, 5, 1764650001]}) \
        .to_parquet(log)
    markers = good_result()["retrains"][0]["markers"]
    assert missing_from_log(log, markers) == [markers[1]]  # its row is user 8's


def test_the_replayed_interactions_are_the_newest_and_the_base_keeps_the_rest_in_file_order(tmp_path):
    interactions = pd.DataFrame({"user_id": [1, 2, 3, 1, 2, 3], "item_id": [10, 11, 12, 13, 14, 15],
                                 "timestamp": [5, 1, 9, 9, 2, 7]})
    interactions.to_csv(tmp_path / "log.csv", index=False)
    files, replay = hold_back(str(tmp_path / "log.csv"), tmp_path, 2, tmp_path / "out")
    base = pd.read_parquet(files.interactions)
    assert base[["user_id", "item_id"]].values.tolist() == [[1, 10], [2, 11], [2, 14], [3, 15]]
    assert pd.read_parquet(replay)[["item_id", "timestamp"]].values.tolist() == [[12, 9], [13, 9]]  # tie: file order


def test_switch_times_count_from_the_move_of_current():
    timeline = Timeline(versions=[(9.0, 0, "v2"), (10.0, 0, "v1"), (10.5, 1, "v1"), (11.0, 0, "v2"),
                                  (12.5, 1, None), (13.0, 1, "v2"), (14.0, 0, "v2")])
    assert switch_times(timeline, 2, "v2", since=10.0) == [1.0, 3.0]
    assert switch_times(timeline, 3, "v2", since=10.0)[2] is None  # a replica never seen on it


def test_the_drill_publishes_into_a_copy_never_into_the_served_root(tiny, tmp_path):
    served = {root: current_version(tiny.bundles / root) for root in ("teacher", "compressed")}
    assert copy_served(tiny.bundles, tmp_path / "bundles") == served
    for root, version in served.items():
        assert current_version(tmp_path / "bundles" / root) == version
        assert resolve_bundle(tmp_path / "bundles" / root).parent.parent == tmp_path / "bundles" / root
        assert current_version(tiny.bundles / root) == version


def test_the_timeline_keeps_each_change_and_the_last_sample():
    timeline = Timeline(up=[(0.0, 2), (0.1, 2), (0.2, 1), (0.3, 1), (0.4, 2), (0.5, 2)],
                        versions=[(0.0, 0, "v1"), (0.0, 1, "v1"), (0.3, 0, "v2"), (0.3, 1, "v1"), (0.6, 0, "v2"),
                                  (0.6, 1, "v2"), (0.9, 0, "v2"), (0.9, 1, "v2")])
    kept = timeline_json(timeline)
    assert kept["up"] == [(0.0, 2), (0.2, 1), (0.4, 2), (0.5, 2)]
    assert kept["versions"] == [(0.0, 0, "v1"), (0.0, 1, "v1"), (0.3, 0, "v2"), (0.6, 1, "v2"), (0.9, 0, "v2"),
                                (0.9, 1, "v2")]
