"""`python -m serving`: one-line errors for bad bundles, several workers configured through RECSYS_*."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from loadtest.harness import free_port
from recsys.data.events import EventStore
from serving.settings import Settings, settings_to_env
from tests.fixtures.data import ROOT
from tests.fixtures.servers import running_server


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_path_without_a_bundle_exits_2_with_one_line(tmp_path):
    for path, says in ((tmp_path / "missing", "no bundle at"), (tmp_path, "no bundle at")):
        result = run_cli("--bundle", str(path), "--port", "0")
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and says in result.stderr
        assert result.stderr.startswith("python -m serving: error: ")


def test_a_damaged_bundle_exits_2_before_starting(bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundles.version_dir(bundles.v1), copy)
    (copy / "popularity.npy").write_bytes(b"garbage")
    result = run_cli("--bundle", str(copy), "--port", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "does not match its manifest" in result.stderr and "popularity.npy" in result.stderr


def test_missing_bundle_argument_exits_2(monkeypatch):
    monkeypatch.delenv("RECSYS_BUNDLE", raising=False)
    result = run_cli("--port", "0")
    assert result.returncode == 2 and "pass --bundle PATH or set RECSYS_BUNDLE" in result.stderr


def test_settings_survive_the_trip_through_environment_variables(tmp_path, monkeypatch):
    settings = Settings(bundle=tmp_path, events_db=tmp_path / "e.sqlite", admin_token="t0k", max_k=7,
                        watch_current=True, precompute_users=False)
    for name, value in settings_to_env(settings).items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


@pytest.mark.slow  # several server processes: end to end
@pytest.mark.parametrize("workers", [2])
def test_several_workers_serve_and_share_the_event_store(bundles, tmp_path, workers):
    events_db = tmp_path / "events.sqlite"
    server = running_server("--bundle", str(bundles.root), "--events-db", str(events_db), "--workers", str(workers),
                            port=free_port())
    with server as (_, url), httpx.Client(base_url=url, timeout=10) as http:
        for n in range(20):
            assert http.get("/recommend", params={"user": f"u{n}"}).json()["model_version"] == bundles.v1
            assert http.post("/events", json={"user": f"u{n}", "item": "i1"}).status_code == 202
    with EventStore(events_db) as store:
        assert store.count() == 20
