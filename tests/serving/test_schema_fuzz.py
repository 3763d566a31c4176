"""Schemathesis against /openapi.json: valid and invalid requests to every operation, never a 5xx.

Driven through ``operation.as_strategy`` + Hypothesis rather than ``schemathesis.pytest.from_fixture``:
with pytest 9.2, schemathesis 4.32's lazy loader fails on ``request.node._nodeid`` (removed in pytest).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from serving.app import create_app
from serving.settings import Settings
from tests.fixtures.servers import ADMIN_TOKEN, admin_headers

# Hypothesis over every operation takes ~20 s: end to end, outside the edit loop's tier.
pytestmark = pytest.mark.slow

MAX_EXAMPLES = 30
WITH_INPUT = [("GET", "/recommend"), ("POST", "/recommend"), ("GET", "/similar"), ("GET", "/search"),
              ("POST", "/events"), ("POST", "/admin/reload"), ("GET", "/explain"), ("GET", "/users"),
              ("GET", "/reports/{name}"), ("GET", "/ui/{asset}")]
WITHOUT_INPUT = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/version"), ("GET", "/metrics"), ("GET", "/")]
# Operations without parameters or body have no invalid requests to generate.
CASES = [(*op, GenerationMode.POSITIVE) for op in WITH_INPUT + WITHOUT_INPUT] + [
    (*op, GenerationMode.NEGATIVE) for op in WITH_INPUT]


@pytest.fixture(scope="module")
def api_schema(search_bundle, tmp_path_factory):
    # The bundle with a search index, so /search is fuzzed past its 404.
    settings = Settings(bundle=search_bundle.root, events_db=tmp_path_factory.mktemp("fuzz") / "events.sqlite",
                        admin_token=ADMIN_TOKEN)
    # Schemathesis starts the app's lifespan itself (once per app), so the model is loaded.
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))


def test_every_operation_is_fuzzed(api_schema):
    found = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert found == set(WITH_INPUT + WITHOUT_INPUT)


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES])
def test_no_server_errors_and_documented_responses(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.function_scoped_fixture])
    def check(case):
        # With the admin token, /admin/reload is fuzzed past its auth check too.
        case.call_and_validate(headers=admin_headers(),
                               checks=[not_a_server_error, status_code_conformance, response_schema_conformance])

    check()
