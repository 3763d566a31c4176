"""Hot reload: admin auth, swap under load with zero failed requests, refusal of damaged bundles, watcher."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from recsys.bundle.publish import set_current
from recsys.pipeline.served import ServingModel
from serving.app import create_app
from serving.settings import Settings
from tests.fixtures.servers import ADMIN_TOKEN, admin_headers

HAMMER_THREADS = 4
REQUESTS_PER_THREAD = 60
HAMMER_TIMEOUT_S = 60


def served_version(client) -> str:
    return client.get("/version").json()["bundle_version"]


def reload_to(client, path):
    return client.post("/admin/reload", headers=admin_headers(), json={"path": str(path)})


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "unauthorized"),
        ({"X-Admin-Token": "wrong"}, 401, "unauthorized"),
        ({"X-Admin-Token": ADMIN_TOKEN}, 200, None),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200, None),
    ],
)
def test_admin_token_is_required(client, headers, status, error):
    response = client.post("/admin/reload", headers=headers)
    assert response.status_code == status
    if error:
        assert response.json()["error"] == error
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_admin_routes_are_off_without_a_configured_token(bundles, tmp_path):
    settings = Settings(bundle=bundles.root, events_db=tmp_path / "e.sqlite")
    with TestClient(create_app(settings)) as client:
        response = client.post("/admin/reload", headers=admin_headers())
    assert response.status_code == 403
    assert response.json() == {"error": "admin_disabled",
                               "detail": "admin token not configured: set RECSYS_ADMIN_TOKEN to enable /admin routes"}


def test_reload_without_a_change_keeps_the_model(client, bundles):
    response = client.post("/admin/reload", headers=admin_headers())
    assert response.json() == {"previous_version": bundles.v1, "version": bundles.v1, "changed": False}


def test_reload_to_another_bundle_then_back(client, bundles):
    response = reload_to(client, bundles.version_dir(bundles.v2))
    assert response.status_code == 200
    assert response.json() == {"previous_version": bundles.v1, "version": bundles.v2, "changed": True}
    assert served_version(client) == bundles.v2
    assert client.get("/recommend", params={"user": "u0"}).json()["model_version"] == bundles.v2
    back = client.post("/admin/reload", headers=admin_headers())  # the configured root: `current` is v1
    assert back.json()["version"] == bundles.v1 and served_version(client) == bundles.v1
    assert 'recsys_reloads_total{outcome="success"} 2.0' in client.get("/metrics").text


def test_hot_reload_under_concurrent_requests_fails_no_request(client, bundles):
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    started = threading.Barrier(HAMMER_THREADS + 1)
    deadline = time.monotonic() + HAMMER_TIMEOUT_S

    def hammer(user: str) -> None:
        started.wait()
        for _ in range(REQUESTS_PER_THREAD):
            if time.monotonic() > deadline:
                break
            response = client.get("/recommend", params={"user": user, "k": 5})
            version = response.json().get("model_version") if response.status_code == 200 else None
            with lock:
                results.append((response.status_code, version))

    threads = [threading.Thread(target=hammer, args=(f"u{i}",)) for i in range(HAMMER_THREADS)]
    for thread in threads:
        thread.start()
    started.wait()
    while len(results) < REQUESTS_PER_THREAD and time.monotonic() < deadline:
        time.sleep(0.005)  # let some requests through on v1 first
    reload = reload_to(client, bundles.version_dir(bundles.v2))
    done_at_swap = len(results)
    for thread in threads:
        thread.join(timeout=HAMMER_TIMEOUT_S)
    assert reload.status_code == 200 and reload.json()["version"] == bundles.v2
    assert len(results) == HAMMER_THREADS * REQUESTS_PER_THREAD
    assert [status for status, _ in results if status != 200] == []
    assert {version for _, version in results} <= {bundles.v1, bundles.v2}
    assert results[0][1] == bundles.v1 and all(version == bundles.v2 for _, version in results[done_at_swap + 4:])
    assert served_version(client) == bundles.v2


def _flip_a_byte(bundle_dir):
    with open(bundle_dir / "popularity.npy", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))


def _future_format(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("damage", "reason"), [(_flip_a_byte, "popularity.npy"), (_future_format, "format 99")])
def test_a_damaged_bundle_is_refused_and_the_old_one_keeps_serving(client, bundles, tmp_path, damage, reason):
    copy = tmp_path / "damaged"
    shutil.copytree(bundles.version_dir(bundles.v2), copy)
    damage(copy)
    response = reload_to(client, copy)
    assert response.status_code == 409
    body = response.json()
    assert body["error"] == "bundle_refused"
    assert reason in body["detail"] and f"still serving {bundles.v1}" in body["detail"]
    assert served_version(client) == bundles.v1
    assert client.get("/recommend", params={"user": "u0"}).status_code == 200
    assert 'recsys_reloads_total{outcome="refused"} 1.0' in client.get("/metrics").text


def test_a_bundle_failing_its_smoke_test_is_refused(client, bundles, monkeypatch):
    def failing_smoke_test(self):
        raise RuntimeError("returned no items")

    monkeypatch.setattr(ServingModel, "smoke_test", failing_smoke_test)
    response = reload_to(client, bundles.version_dir(bundles.v2))
    assert response.status_code == 409 and "returned no items" in response.json()["detail"]
    assert served_version(client) == bundles.v1


@pytest.mark.parametrize("path", ["/definitely/not/here", "/", "x" * 4000])
def test_a_path_without_a_bundle_is_404(client, path):
    response = client.post("/admin/reload", headers=admin_headers(), json={"path": path})
    assert response.status_code == 404
    assert response.json()["error"] == "bundle_not_found"


def test_bad_reload_bodies_are_422(client):
    for body in ({"path": ""}, {"path": 3}, {"path": "a\u0000b"}, {"other": "x"}, [1]):
        response = client.post("/admin/reload", headers=admin_headers(), json=body)
        assert response.status_code == 422, body
        assert response.json()["error"] == "invalid_request"


def test_the_watcher_follows_the_current_pointer(bundles, tmp_path):
    root = bundles.copy_root(tmp_path / "root")
    settings = Settings(bundle=root, events_db=tmp_path / "e.sqlite", watch_current=True, watch_interval_s=0.1)
    with TestClient(create_app(settings)) as client:
        assert served_version(client) == bundles.v1
        set_current(root, bundles.v2)
        deadline = time.monotonic() + 30
        while served_version(client) != bundles.v2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_version(client) == bundles.v2


def test_a_reload_frees_the_bundle_it_replaced(client, bundles):
    """Nothing keeps a replaced bundle alive (the lifespan, caches, metrics, the batcher): after a
    reload and the requests it served, the old model is collected."""
    import gc
    import weakref

    first = weakref.ref(client.app.state.services.state.live.model)
    for path in (bundles.version_dir(bundles.v2), bundles.version_dir(bundles.v1)):
        assert client.get("/recommend", params={"user": "u0", "k": 3}).status_code == 200
        assert client.get("/similar", params={"item": "i0", "k": 3}).status_code == 200
        assert reload_to(client, path).status_code == 200
    gc.collect()
    assert first() is None
    assert served_version(client) == bundles.v1  # the same version, loaded anew
