"""The locustfile, headless for a few seconds against a real server on a real tiny bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from loadtest.harness import LOCUSTFILE, running_server
from recsys.data.events import EventStore
from tests.fixtures.tiny import ROOT, locust_env, serving

pytestmark = pytest.mark.slow  # Locust against a real server

RUN_S = 5


def locust(url: str, out_prefix, env: dict[str, str], users: int = 4, seconds: int = RUN_S):
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url, "--users",
               str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s", "--csv", str(out_prefix),
               "--only-summary", "--stop-timeout", "2"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60)


def rows_by_name(prefix) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv", newline="") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    directory = tmp_path_factory.mktemp("locust-server")
    with serving(tiny.bundles / "compressed", directory / "events.sqlite", directory / "server.log") as (_, url):
        yield url, directory / "events.sqlite"


def test_full_mix_runs_clean_against_the_real_server(tiny, server, tmp_path):
    url, events_db = server
    with EventStore(events_db) as store:
        before = store.count()
    result = locust(url, tmp_path / "run", locust_env(tiny.bundles / "compressed",
                                                      latencies=str(tmp_path / "latencies.json")))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_by_name(tmp_path / "run")
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0
    assert {"/recommend", "/recommend [unknown user]", "/similar [popular]", "/similar [long tail]", "/search",
            "/search [known user]"} <= rows.keys()  # the tiny bundles have a search index
    posts = int(rows["/events"]["Request Count"])
    with EventStore(events_db) as store:
        assert posts <= store.count() - before <= 3 * posts  # 1-3 events per POST, all durable
    exact = json.loads((tmp_path / "latencies.json").read_text())
    assert exact["Aggregated"]["count"] == int(total["Request Count"])
    assert 0 < exact["Aggregated"]["p50_ms"] <= exact["Aggregated"]["p99_ms"] <= exact["Aggregated"]["max_ms"]


def test_wrong_answers_fail_the_run(tiny, tmp_path):
    """The ceiling answers every user with the same popular items: content checks must catch it."""
    command = [sys.executable, "-m", "loadtest.ceiling", "--bundle", str(tiny.bundles / "compressed"),
               "--host", "127.0.0.1", "--port", "0"]
    with running_server(command, tmp_path / "ceiling.log") as (_, url):
        result = locust(url, tmp_path / "wrong", locust_env(tiny.bundles / "compressed", mix="recommend"),
                        seconds=2)
    assert result.returncode == 1
    assert "load test failed" in result.stderr
    with open(tmp_path / "wrong_failures.csv", newline="") as handle:
        errors = {row["Error"] for row in csv.DictReader(handle)}
    assert any("already seen" in error for error in errors), errors


def test_missing_bundle_variable_is_a_clear_error(tmp_path):
    env = locust_env(tmp_path)
    del env["RECSYS_LOADTEST_BUNDLE"]
    result = locust("http://127.0.0.1:9", tmp_path / "none", env, seconds=1)
    assert result.returncode != 0
    assert "RECSYS_LOADTEST_BUNDLE" in result.stderr
