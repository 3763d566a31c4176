"""The retrain loop reads events from whichever store the server writes to: SQLite or PostgreSQL.

Only the merge step (training is covered end to end by test_retrain.py): fast.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from loadtest.harness import free_port
from ops.retrain import Retrain, StepFailed, parse_args, read_events
from recsys.data.events import Event, open_event_store
from tests.fixtures.postgres import import_driver

EVENTS = [Event("1", "12", "click", timestamp=500, event_id="e1"), Event("7", "99", "purchase", timestamp=501)]


@pytest.fixture
def base_log(tmp_path):
    path = tmp_path / "shop.csv"
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 12], "timestamp": [100, 200, 150]}).to_csv(path,
                                                                                                     index=False)
    return path


def retrain_config(base_log, tmp_path, *store_args: str):
    return parse_args(["--dataset", str(base_log), "--bundles", str(tmp_path / "bundles"), "--no-reload",
                       *store_args])


@pytest.mark.parametrize("flag", ["--events-db", "--events-url"])
def test_the_merge_reads_the_configured_store(base_log, tmp_path, postgres_url, flag):
    location = tmp_path / "events.sqlite" if flag == "--events-db" else postgres_url
    with open_event_store(location) as store:
        store.append(EVENTS)
    retrain = Retrain(retrain_config(base_log, tmp_path, flag, str(location)))

    files, _ = retrain.merge()

    merged = pd.read_parquet(files.interactions)
    assert merged["user_id"].tolist() == [1, 1, 2, 1, 7] and merged["item_id"].tolist()[-2:] == [12, 99]
    assert retrain.record["merge"]["n_events"] == 2 and retrain.record["merge"]["events_db"] == str(location)


def test_the_events_url_comes_from_the_environment_and_wins_over_the_file(base_log, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_EVENTS_URL", "postgresql://shop@db.internal/events")
    cfg = retrain_config(base_log, tmp_path, "--events-db", str(tmp_path / "events.sqlite"))
    assert cfg.event_store == "postgresql://shop@db.internal/events"
    monkeypatch.delenv("RECSYS_EVENTS_URL")
    assert retrain_config(base_log, tmp_path).event_store == retrain_config(base_log, tmp_path).events_db


def test_an_unreachable_database_fails_the_merge_step_in_one_line(base_log, tmp_path):
    import_driver()
    url = f"postgresql://shop:s3cret@127.0.0.1:{free_port()}/events"  # nothing listens there
    retrain = Retrain(retrain_config(base_log, tmp_path, "--events-url", url))

    with pytest.raises(StepFailed, match="step 1/4 merge: cannot connect to the event store") as caught:
        retrain.merge()

    assert caught.value.code == 1 and "s3cret" not in str(caught.value)
    assert "s3cret" not in json.dumps(retrain.record, default=str)


def test_no_sqlite_file_means_the_base_log_alone(tmp_path):
    assert read_events(tmp_path / "missing.sqlite").empty
    assert not (tmp_path / "missing.sqlite").exists()


def test_both_store_flags_at_once_are_refused(base_log, tmp_path, capsys):
    with pytest.raises(SystemExit):
        retrain_config(base_log, tmp_path, "--events-db", "x.sqlite", "--events-url", "postgresql://db/events")
    assert "not allowed with argument" in capsys.readouterr().err
