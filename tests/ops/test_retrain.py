"""The retrain loop on the tiny bundles: events merged, the gate guarding `current`, the server reloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pandas as pd
import pytest

from ops.server import ServerClient
from recsys.bundle.publish import current_version, list_versions
from recsys.data.events import Event, EventStore
from tests.fixtures.tiny import ADMIN_TOKEN, ROOT, TRAIN_FAST, serving

pytestmark = pytest.mark.slow  # the retrain loop end to end

FAST_COMPRESS = "--student-dim 8 --tower-epochs 2 --ranker-epochs 1 --latency-requests 20"


def retrain_command(tiny, bundles, events_db, *extra: str, token: str | None = None) -> tuple[list[str], dict]:
    command = [sys.executable, "-m", "ops.retrain", "--dataset", str(tiny.interactions), "--items", str(tiny.items),
               "--data-dir", str(tiny.root), "--events-db", str(events_db), "--bundles", str(bundles),
               f"--train-args={' '.join(TRAIN_FAST)}",
               f"--compress-args={FAST_COMPRESS} --search-teacher {tiny.text_teacher}", *extra]
    env = {key: value for key, value in os.environ.items() if key != "RECSYS_ADMIN_TOKEN"}
    if token:
        env["RECSYS_ADMIN_TOKEN"] = token
    return command, env


def retrain(tiny, bundles, events_db, *extra: str, token: str | None = None) -> subprocess.CompletedProcess:
    command, env = retrain_command(tiny, bundles, events_db, *extra, token=token)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def events_db(tmp_path, tiny):
    """Events for a known user, a brand-new user and a brand-new item."""
    known_user = str(pd.read_parquet(tiny.interactions)["user_id"].iloc[0])
    path = tmp_path / "events.sqlite"
    with EventStore(path) as store:
        store.append([Event(known_user, "3", "click"), Event("9000001", "4", "purchase"),
                      Event(known_user, "777777", "view")])
    return path


def test_a_failing_gate_leaves_current_untouched(tiny, tmp_path, events_db):
    bundles = tiny.copy_bundles(tmp_path / "bundles")
    before = {root: (current_version(bundles / root), list_versions(bundles / root)) for root in
              ("teacher", "compressed")}
    result = retrain(tiny, bundles, events_db, "--threshold", "1.5", "--no-reload")
    assert result.returncode == 1, result.stderr[-2000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("retrain: step 3/4 quality gate refused the new model: compressed")
    assert "95 % interval" in last_line
    assert f"current still is {before['compressed'][0]}" in last_line
    assert {root: (current_version(bundles / root), list_versions(bundles / root)) for root in
            ("teacher", "compressed")} == before
    record = json.loads(next((tmp_path / "retrain" / "runs").glob("*/retrain.json")).read_text())
    base_rows = len(pd.read_parquet(tiny.interactions))
    assert record["merge"]["n_events"] == 3 and record["merge"]["rows"] == base_rows + 3
    assert record["merge"]["new_users"] == 1 and record["merge"]["new_items"] == 1
    merged = pd.read_parquet(record["merge"]["log"])
    assert len(merged) == base_rows + 3 and merged["item_id"].iloc[-1] == 777777
    assert record["outcome"].startswith("failed: step 3/4")


def test_retrain_publishes_and_hot_reloads_then_skips_when_nothing_changed(tiny, tmp_path, events_db):
    bundles = tiny.copy_bundles(tmp_path / "bundles")
    old = current_version(bundles / "compressed")
    with serving(bundles / "compressed", tmp_path / "served-events.sqlite", tmp_path / "server.log") as (_, url):
        result = retrain(tiny, bundles, events_db, "--threshold", "0.3", "--server", url, token=ADMIN_TOKEN)
        assert result.returncode == 0, result.stderr[-3000:]
        new = current_version(bundles / "compressed")
        assert new != old and f"reload: {url} now serves {new} (was {old})" in result.stderr
        assert ServerClient(url, None)._call("GET", "/version")["bundle_version"] == new
        # Both bundles were backtested on the users' latest events (the new ones), which neither was built from.
        record = json.loads(next((tmp_path / "retrain" / "runs").glob("*/retrain.json")).read_text())
        assert record["backtest"]["events"] >= 1 and record["backtest"]["cutoff"] is not None
        for name in ("served_before", "candidate_holdout"):
            assert 0 <= record["backtest"][name]["NDCG@10"] <= 1
        again = retrain(tiny, bundles, events_db, "--server", url, token=ADMIN_TOKEN)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "no new data since bundle" in again.stderr and current_version(bundles / "compressed") == new
        no_token = retrain(tiny, bundles, events_db, "--server", url)
        assert no_token.returncode == 3 and "RECSYS_ADMIN_TOKEN is not set" in no_token.stderr.splitlines()[-1]


def test_an_event_posted_during_a_retrain_still_counts_after_its_reload(tiny, tmp_path, events_db):
    bundles = tiny.copy_bundles(tmp_path / "bundles")
    user = str(pd.read_parquet(tiny.interactions)["user_id"].iloc[-1])
    with serving(bundles / "compressed", events_db, tmp_path / "server.log") as (_, url), \
            httpx.Client(base_url=url, timeout=30) as http:
        def top() -> list[str]:
            return [item["item_id"] for item in http.get("/recommend", params={"user": user, "k": 10}).json()["items"]]

        old = current_version(bundles / "compressed")
        command, env = retrain_command(tiny, bundles, events_db, "--threshold", "0.3", "--server", url,
                                       token=ADMIN_TOKEN)
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        log = []
        for line in process.stderr:  # wait until the events are merged and training has begun
            log.append(line)
            if "[2/4] train" in line:
                break
        assert process.poll() is None and "[2/4] train" in log[-1], "".join(log)[-3000:]
        clicked = top()[0]
        assert http.post("/events", json={"user": user, "item": clicked}).status_code == 202
        assert clicked not in top()
        rest, _ = process.communicate(timeout=300)
        assert process.returncode == 0, ("".join(log) + (rest or ""))[-3000:]
        assert current_version(bundles / "compressed") != old
        assert http.get("/version").json()["bundle_version"] == current_version(bundles / "compressed")
        # The new bundle was not built from the event; its overlay replayed it: still not recommended back.
        assert clicked not in top()


def test_no_server_running_is_fine(tiny, tmp_path):
    assert not ServerClient("http://127.0.0.1:9", ADMIN_TOKEN).is_up()
    bundles = tiny.copy_bundles(tmp_path / "bundles")
    # Nothing new (no events DB), so training is skipped and only the reload step runs.
    result = retrain(tiny, bundles, tmp_path / "missing.sqlite", "--server", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no events DB" in result.stderr and "no server answering at http://127.0.0.1:9" in result.stderr


def test_bad_base_log_is_one_clear_line(tmp_path):
    bad = tmp_path / "log.csv"
    bad.write_text("user,item\n1,2\n")
    result = subprocess.run([sys.executable, "-m", "ops.retrain", "--dataset", str(bad), "--bundles",
                             str(tmp_path / "b"), "--no-reload"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("retrain: base log: ")
    assert "missing required column" in result.stderr
