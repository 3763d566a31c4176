"""Staggered reloads of replicas sharing a bundles root: one at a time (the root's lease), out of the
load balancer's rotation while loading (/readyz 503), the old bundle answering meanwhile.
tests/serving/test_replicas.py runs real replicas behind HAProxy."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from recsys.bundle.publish import set_current
from serving.app import create_app
from serving.settings import Settings
from serving.state import LEASE_NAME, ModelState
from tests.fixtures.servers import ADMIN_TOKEN, admin_headers

WAIT_S = 30


def replica_settings(root, tmp_path, **overrides) -> Settings:
    values = {"staggered_reload": True, "reload_settle_s": 0.0} | overrides
    return Settings(bundle=root, events_db=tmp_path / "events.sqlite", admin_token=ADMIN_TOKEN, **values)


class GatedOpen:
    """Wraps ``ModelState._open`` so a reload's load waits for the test to release it."""

    def __init__(self, monkeypatch):
        self.entered, self.release = threading.Event(), threading.Event()
        original = ModelState._open

        def gated(state, bundle_dir):
            if state.live is not None:  # not the first load: that one runs at startup
                self.entered.set()
                assert self.release.wait(WAIT_S), "the test never released the load"
            return original(state, bundle_dir)

        monkeypatch.setattr(ModelState, "_open", gated)


def reload_in_background(client, version_dir) -> threading.Thread:
    thread = threading.Thread(target=lambda: client.post("/admin/reload", headers=admin_headers(),
                                                         json={"path": str(version_dir)}))
    thread.start()
    return thread


def test_a_reloading_replica_is_not_ready_but_still_answers(bundles, tmp_path, monkeypatch):
    root = bundles.copy_root(tmp_path / "root")
    gate = GatedOpen(monkeypatch)
    with TestClient(create_app(replica_settings(root, tmp_path))) as client:
        assert client.get("/readyz").status_code == 200
        reload = reload_in_background(client, root / "versions" / bundles.v2)
        assert gate.entered.wait(WAIT_S)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"] == "not_ready" and bundles.v2 in ready.json()["detail"]
        answer = client.get("/recommend", params={"user": "u0", "k": 3})
        assert answer.status_code == 200 and answer.json()["model_version"] == bundles.v1
        gate.release.set()
        reload.join(WAIT_S)
        assert client.get("/readyz").json()["model_version"] == bundles.v2
    assert (root / LEASE_NAME).exists()


def test_a_lone_server_stays_ready_while_it_reloads(bundles, tmp_path, monkeypatch):
    root = bundles.copy_root(tmp_path / "root")
    gate = GatedOpen(monkeypatch)
    settings = replica_settings(root, tmp_path).model_copy(update={"staggered_reload": False})
    with TestClient(create_app(settings)) as client:
        reload = reload_in_background(client, root / "versions" / bundles.v2)
        assert gate.entered.wait(WAIT_S)
        assert client.get("/readyz").status_code == 200
        gate.release.set()
        reload.join(WAIT_S)
    assert not (root / LEASE_NAME).exists()


def test_replicas_of_one_root_reload_one_at_a_time(bundles, tmp_path, monkeypatch):
    root = bundles.copy_root(tmp_path / "root")
    spans: list[tuple[str, float, float]] = []
    original = ModelState._open

    def timed(state, bundle_dir):
        started = time.monotonic()
        time.sleep(0.3)  # long enough that two unserialised loads would overlap
        live = original(state, bundle_dir)
        spans.append((threading.current_thread().name, started, time.monotonic()))
        return live

    replicas = [ModelState(replica_settings(root, tmp_path)) for _ in range(3)]
    for replica in replicas:
        replica.load_initial()
    monkeypatch.setattr(ModelState, "_open", timed)
    set_current(root, bundles.v2)
    threads = [threading.Thread(target=replica.reload, name=f"replica-{i}") for i, replica in enumerate(replicas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert all(replica.current().version == bundles.v2 for replica in replicas)
    spans.sort(key=lambda span: span[1])
    assert len(spans) == 3
    for (_, _, end), (name, start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"{name} started loading before the previous replica finished"


def test_the_lease_is_kept_until_the_balancer_has_seen_the_replica_back(bundles, tmp_path):
    settle_s = 0.4
    root = bundles.copy_root(tmp_path / "root")
    first, second = (ModelState(replica_settings(root, tmp_path, reload_settle_s=settle_s)) for _ in range(2))
    first.load_initial()
    second.load_initial()
    set_current(root, bundles.v2)
    second_took_lease: list[float] = []
    thread = threading.Thread(target=first.reload)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while first.draining is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    while first.draining is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    ready_again = time.monotonic()
    with second._lease.held():
        second_took_lease.append(time.monotonic())
    thread.join(WAIT_S)
    assert first.current().version == bundles.v2
    assert second_took_lease[0] - ready_again >= settle_s * 0.9
