"""Health, readiness, version, metrics, and the error contract (JSON always, no tracebacks)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from recsys.bundle.manifest import FORMAT_VERSION, BundleNotFound
from recsys.pipeline.served import ServingModel
from serving.app import create_app
from serving.schemas import VersionResponse


def test_healthz_and_readyz(client, bundles):
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model_version": bundles.v1}


def test_not_ready_until_the_lifespan_has_loaded_the_model(settings):
    client = TestClient(create_app(settings))  # no `with`: the lifespan never runs
    assert client.get("/healthz").status_code == 200
    for path in ("/readyz", "/recommend?user=u0", "/version"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.json()["error"] == "not_ready"
    assert client.post("/events", json={"user": "u0", "item": "i1"}).status_code == 503


def test_version_summarises_the_manifest(client, bundles):
    body = VersionResponse.model_validate(client.get("/version").json())
    assert body.bundle_version == bundles.v1
    assert body.kind == "teacher" and body.format_version == FORMAT_VERSION
    assert body.data_fingerprint == bundles.dataset.fingerprint()
    assert body.metrics == {"MRR@10": 1.0} and body.created_at.endswith("Z")


def test_metrics_count_requests_stages_fallbacks_and_the_model_version(client, bundles):
    client.get("/recommend", params={"user": "u0"})
    client.get("/recommend", params={"user": "someone-new"})
    client.get("/recommend", params={"user": "u0", "k": 0})
    text = client.get("/metrics").text
    assert 'recsys_http_requests_total{endpoint="/recommend",status="200"} 2.0' in text
    assert 'recsys_http_requests_total{endpoint="/recommend",status="422"} 1.0' in text
    assert 'recsys_http_request_duration_seconds_count{endpoint="/recommend",status="200"} 2.0' in text
    assert f'recsys_model_info{{bundle_version="{bundles.v1}"' in text
    assert 'recsys_fallbacks_total{kind="popular"} 1.0' in text
    assert 'recsys_stage_duration_seconds_count{endpoint="/recommend",stage=' in text


def test_unknown_paths_are_one_metrics_label_and_json_errors(client):
    for path in ("/nope", "/nope/again"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert client.delete("/recommend").json()["error"] == "method_not_allowed"
    assert 'recsys_http_requests_total{endpoint="unmatched",status="404"} 2.0' in client.get("/metrics").text


def test_each_app_has_its_own_registry(settings):
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        first.get("/healthz")
        assert 'endpoint="/healthz"' in first.get("/metrics").text
        assert 'endpoint="/healthz"' not in second.get("/metrics").text


def test_an_unexpected_error_is_a_500_json_without_traceback(settings, monkeypatch, caplog):
    def broken(self, *args, **kwargs):
        raise RuntimeError("secret internal state")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        monkeypatch.setattr(ServingModel, "recommend_many", broken)
        response = client.get("/recommend", params={"user": "u0"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error",
                               "detail": "unexpected server error; the server log has the details"}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "secret internal state" in caplog.text  # logged for whoever debugs it


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_api_docs_are_served(client, path):
    assert client.get(path).status_code == 200


def test_openapi_states_this_apps_limits(bundles, tmp_path):
    from serving.settings import Settings

    settings = Settings(bundle=bundles.root, events_db=tmp_path / "e.sqlite", max_k=50, max_id_length=32)
    schema = TestClient(create_app(settings)).get("/openapi.json").json()
    params = {p["name"]: p["schema"] for p in schema["paths"]["/recommend"]["get"]["parameters"]}
    assert params["k"]["maximum"] == 50 and params["user"]["maxLength"] == 32
    assert schema["components"]["schemas"]["EventIn"]["properties"]["user"]["maxLength"] == 32


def test_startup_fails_loudly_without_a_bundle(tmp_path, caplog):
    from serving.settings import Settings

    app = create_app(Settings(bundle=tmp_path / "nothing", events_db=tmp_path / "e.sqlite"))
    with pytest.raises(BundleNotFound, match="no bundle at"), TestClient(app):
        pass
    assert "cannot start: bundle" in caplog.text


def test_searches_run_with_the_configured_faiss_threads(client, monkeypatch):
    import faiss

    seen = []
    original = ServingModel.recommend_many

    def recording(self, *args, **kwargs):
        seen.append(faiss.omp_get_max_threads())  # OpenMP settings are per thread: check the request's
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ServingModel, "recommend_many", recording)
    assert client.get("/recommend", params={"user": "u0"}).status_code == 200
    assert seen == [1]
