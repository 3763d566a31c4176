"""What the web page reads: GET /explain (the user's own history items closest to an item), GET
/users (known users by id prefix) and GET /reports/{name} (the card and the load test's summary).

The checkerboard's items i0-i9 and i10-i19 are two groups liked by disjoint users (even and odd
users); the tiny towers put each group's items close together, so an item's closest history item
is known: one of its own group."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from recsys.data.history import History
from recsys.data.idmap import IdMap
from recsys.pipeline.browse import MAX_EXPLAIN_HISTORY, UserDirectory, history_newest_first
from serving.app import create_app
from serving.reports import REPORTS, ReportName, card_directory
from serving.schemas import ExplainResponse, UsersResponse
from serving.settings import Settings, settings_to_env

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # not a real image: served as stored, never decoded


def group(item: str) -> int:
    return int(item[1:]) // 10


def known_history(bundles) -> dict[str, set[str]]:
    """Each user's items the bundle holds: train and valid (the test item is held out)."""
    split = bundles.split
    known = pd.concat([split.train, split.valid])
    users = split.users.to_external(known["u"].to_numpy())
    items = split.items.to_external(known["i"].to_numpy())
    history: dict[str, set[str]] = {}
    for user, item in zip(users.tolist(), items.tolist(), strict=True):
        history.setdefault(str(user), set()).add(str(item))
    return history


def held_out_item(bundles, user: str) -> str:
    split = bundles.split
    test = split.test[split.test["u"] == split.users.index_of(user)]
    return str(split.items.to_external(test["i"].to_numpy())[0])


def explain(client: TestClient, **params) -> ExplainResponse:
    response = client.get("/explain", params=params)
    assert response.status_code == 200, response.text
    return ExplainResponse.model_validate(response.json())


def reasons(body: ExplainResponse) -> dict[str, list[str]]:
    return {entry.item_id: [reason.item_id for reason in entry.because] for entry in body.items}


def users(client: TestClient, **params) -> UsersResponse:
    response = client.get("/users", params=params)
    assert response.status_code == 200, response.text
    return UsersResponse.model_validate(response.json())


@contextmanager
def app_client(bundle: Path, tmp_path: Path, **settings) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(bundle=bundle, events_db=tmp_path / "events.sqlite", **settings))) as client:
        yield client


# ---- /explain -------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["u0", "u1", "u6"])
def test_a_recommendation_is_explained_by_the_users_own_history_best_first(client, bundles, user):
    history = known_history(bundles)[user]
    recommended = [item["item_id"] for item in client.get("/recommend", params={"user": user, "k": 5}).json()["items"]]
    held_out = held_out_item(bundles, user)  # the right recommendation
    asked = list(dict.fromkeys([held_out, *recommended]))
    body = explain(client, user=user, items=",".join(asked))
    assert body.user == user and body.model_version == bundles.v1
    assert [entry.item_id for entry in body.items] == asked
    for entry in body.items:
        because = [reason.item_id for reason in entry.because]
        assert len(because) == 3 and len(set(because)) == 3  # n defaults to 3; the user has 9 items
        assert set(because) <= history and entry.item_id not in because
        scores = [reason.score for reason in entry.because]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
        assert all(reason.title == f"item {reason.item_id[1:]}" for reason in entry.because)
    # The held-out item is of the user's group, and so is every item explaining it.
    assert group(held_out) == int(user[1:]) % 2
    assert {group(item) for item in reasons(body)[held_out]} == {group(held_out)}


def test_the_closest_history_item_is_of_the_items_own_group(client):
    """A newcomer's real-time history holds one item of each group: each item is explained by the
    one of its group, then the other; an item is never its own reason."""
    events = [{"user": "newcomer", "item": item} for item in ("i3", "i14")]
    assert client.post("/events", json=events).status_code == 202
    body = explain(client, user="newcomer", items="i5,i16,i3", n=2)
    assert reasons(body) == {"i5": ["i3", "i14"], "i16": ["i14", "i3"], "i3": ["i14"]}
    first, second = body.items[0].because
    assert first.score > second.score


def test_a_real_time_event_becomes_a_reason(client, bundles):
    user = "u0"  # group 0 only, in the bundle
    before = reasons(explain(client, user=user, items="i12,i4", n=20))
    assert "i15" not in before["i12"] and len(before["i12"]) == len(known_history(bundles)[user])
    assert client.post("/events", json={"user": user, "item": "i15", "event": "click"}).status_code == 202
    after = reasons(explain(client, user=user, items="i12,i4", n=20))
    assert after["i12"][0] == "i15"  # the only group-1 item of the history, now the closest
    assert after["i4"][-1] == "i15" and len(after["i4"]) == len(before["i4"]) + 1


@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_n_is_respected(client, bundles, n):
    history = known_history(bundles)["u1"]
    inside, outside = sorted(history)[0], "i0"  # u1 is odd: group 1
    body = reasons(explain(client, user="u1", items=f"{inside},{outside}", n=n))
    assert len(body[inside]) == min(n, len(history) - 1)
    assert len(body[outside]) == min(n, len(history))


def test_an_unknown_user_has_no_reasons(client):
    body = explain(client, user="someone-new", items="i1,i12")
    assert body.user == "someone-new" and reasons(body) == {"i1": [], "i12": []}


def test_unknown_items_get_no_reasons_and_repeated_ids_are_answered_once(client):
    body = reasons(explain(client, user="u0", items="i1,not-an-item,i1,,i2,i1", n=2))
    assert list(body) == ["i1", "not-an-item", "i2"]
    assert body["not-an-item"] == [] and len(body["i1"]) == 2 and len(body["i2"]) == 2


def test_the_model_explains_with_plain_data(client):
    """`ServingModel.explain`: None is an item no id of the bundle can name (a non-integer id for
    an integer-id bundle); the answers keep the order and ids asked."""
    model = client.app.state.services.state.current().model
    answers = model.explain("u0", ["i1", None, "nope", "i12"], 2, since=[("i15", 2_000.0)])
    assert [answer.item_id for answer in answers] == ["i1", None, "nope", "i12"]
    assert [len(answer.because.items) for answer in answers] == [2, 0, 0, 2]
    assert answers[3].because.items[0] == "i15" and answers[3].because.titles[0] == "item 15"


def test_the_history_is_cut_to_its_newest_items():
    n_items = 5000
    seen = sp.csr_matrix((np.ones(3000, np.float32), (np.zeros(3000, int), np.arange(3000))), shape=(1, n_items))
    recent = np.array([[-1, -1, 2999, 7, 1500]])  # oldest first
    history = history_newest_first(History(seen, recent))
    assert len(history) == MAX_EXPLAIN_HISTORY and len(set(history.tolist())) == MAX_EXPLAIN_HISTORY
    assert history[:3].tolist() == [1500, 7, 2999]
    assert history_newest_first(History(seen[:, :3], np.array([[-1, 2]])), 10).tolist() == [2, 0, 1]


def assert_422(client, url: str, mentions: str) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and mentions in response.json()["detail"]


EXPLAIN_422 = [
    ("user=u0", "query.items: Field required"),
    ("items=i1", "query.user: Field required"),
    ("user=u0&items=", "query.items: String should have at least 1 character"),
    ("user=u0&items=,,,", "query.items: no item id"),
    ("user=u0&items=" + ",".join(f"x{i}" for i in range(101)), "query.items: 101 distinct ids; at most 100"),
    ("user=u0&items=i1%00", "query.items: must contain a visible character and no control characters"),
    ("user=u0&items=" + "i1," * 2000, "query.items: String should have at most 4096 characters"),
    ("user=u0&items=i1&n=0", "query.n: Input should be greater than or equal to 1"),
    ("user=u0&items=i1&n=21", "query.n: Input should be less than or equal to 20"),
    ("user=u0&items=i1&n=two", "query.n: Input should be a valid integer"),
    ("user=%20&items=i1", "query.user: must contain a visible character"),
    ("user=u0&items=i1&k=3", "query.k: unknown parameter"),
]


@pytest.mark.parametrize(("query", "mentions"), EXPLAIN_422)
def test_bad_explain_requests_are_422_json(client, query, mentions):
    assert_422(client, f"/explain?{query}", mentions)


def test_a_hundred_items_are_explained(client):
    ids = [f"i{i % 20}" if i < 20 else f"other{i}" for i in range(100)]
    body = explain(client, user="u1", items=",".join(ids))
    assert [entry.item_id for entry in body.items] == ids


# ---- /users ---------------------------------------------------------------------------------------


def test_users_are_filtered_by_prefix_in_the_bundles_order(client, bundles):
    every = [str(user) for user in bundles.split.users.ids.tolist()]
    body = users(client, prefix="u1", limit=200)
    expected = [user for user in every if user.startswith("u1")]
    assert [entry.user_id for entry in body.users] == expected and body.total == len(expected) == 11
    limited = users(client, prefix="u1", limit=3)
    assert [entry.user_id for entry in limited.users] == expected[:3] and limited.total == 11
    everyone = users(client)
    assert [entry.user_id for entry in everyone.users] == every[:20] and everyone.total == len(every) == 40
    assert users(client, prefix="u39").model_dump() == {"users": [{"user_id": "u39", "history": 9}], "total": 1}
    assert users(client, prefix="nobody").model_dump() == {"users": [], "total": 0}


def test_history_counts_are_the_bundles_stored_history(client, bundles):
    expected = {user: len(items) for user, items in known_history(bundles).items()}
    body = users(client, limit=200)
    assert {entry.user_id: entry.history for entry in body.users} == expected
    assert client.post("/events", json={"user": "u0", "item": "i12"}).status_code == 202
    assert users(client, prefix="u0").users[0].history == expected["u0"]  # stored, not real-time


def test_integer_ids_match_their_decimal_prefix_in_the_bundles_order():
    ids = IdMap(np.array([1, 2, 10, 11, 21, 100, 1000, -1], dtype=np.int64))
    seen = sp.csr_matrix(np.eye(8, 3, dtype=np.float32))
    directory = UserDirectory(ids, seen)
    rows, total = directory.matching("1", 200)
    assert directory.ids(rows) == ["1", "10", "11", "100", "1000"] and total == 5
    rows, total = directory.matching("1", 2)
    assert directory.ids(rows) == ["1", "10"] and total == 5
    rows, total = directory.matching("-", 5)
    assert directory.ids(rows) == ["-1"] and total == 1
    assert directory.history_lengths.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_prefixes_with_the_largest_code_point_are_ranges_too():
    top = chr(0x10FFFF)
    ids = IdMap(np.array(["a", f"a{top}", f"a{top}b", "b", top, f"{top}{top}"]))
    directory = UserDirectory(ids, sp.csr_matrix((6, 1), dtype=np.float32))
    for prefix in ("a", f"a{top}", top, "b", "c"):
        rows, total = directory.matching(prefix, 10)
        expected = [user for user in ids.ids.tolist() if user.startswith(prefix)]
        assert directory.ids(rows) == expected and total == len(expected), prefix


USERS_422 = [
    ("limit=0", "query.limit: Input should be greater than or equal to 1"),
    ("limit=201", "query.limit: Input should be less than or equal to 200"),
    ("prefix=" + "u" * 257, "query.prefix: String should have at most 256 characters"),
    ("prefix=u%00", "query.prefix: must contain a visible character and no control characters"),
    ("prefix=%20", "query.prefix: must contain a visible character"),
    ("user=u1", "query.user: unknown parameter"),
]


@pytest.mark.parametrize(("query", "mentions"), USERS_422)
def test_bad_users_requests_are_422_json(client, query, mentions):
    assert_422(client, f"/users?{query}", mentions)


# ---- /reports -------------------------------------------------------------------------------------


@pytest.fixture
def report_dirs(tmp_path) -> tuple[Path, Path]:
    card, loadtest = tmp_path / "card", tmp_path / "loadtest"
    card.mkdir()
    loadtest.mkdir()
    return card, loadtest


@pytest.fixture
def reports_client(bundles, tmp_path, report_dirs) -> Iterator[TestClient]:
    card, loadtest = report_dirs
    with app_client(bundles.root, tmp_path, card_dir=card, loadtest_dir=loadtest) as client:
        yield client


def test_every_report_name_is_served_and_documented():
    assert set(REPORTS) == set(ReportName.__args__)


@pytest.mark.parametrize(("name", "looked_for", "command"), [
    ("card.json", "card/card.json", "make bundles"), ("card.png", "card/card.png", "python -m compression"),
    ("search.png", "card/search.png", "search index"), ("loadtest.json", "loadtest/summary.json", "loadtest.compare"),
    ("loadtest.png", "loadtest/summary.png", "make loadtest")])
def test_a_missing_report_is_404_json_naming_the_file_and_its_command(reports_client, name, looked_for, command):
    response = reports_client.get(f"/reports/{name}")
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "no_report" and looked_for in body["detail"] and command in body["detail"]


def test_reports_are_served_with_their_media_type(reports_client, report_dirs):
    card, loadtest = report_dirs
    (card / "card.json").write_text(json.dumps({"gate": {"threshold": 0.95}, "rows": [{"ratio": 0.98}]}))
    for path in (card / "card.png", card / "search.png", loadtest / "summary.png"):
        path.write_bytes(PNG_BYTES)
    (loadtest / "summary.json").write_text('{"servers": {"compressed": {"rps": 812.5}}}')
    for name in ("card.png", "search.png", "loadtest.png"):
        response = reports_client.get(f"/reports/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == PNG_BYTES
    response = reports_client.get("/reports/card.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {"gate": {"threshold": 0.95}, "rows": [{"ratio": 0.98}]}
    assert reports_client.get("/reports/loadtest.json").json() == {"servers": {"compressed": {"rps": 812.5}}}


def test_nan_and_infinity_in_a_report_become_null(reports_client, report_dirs):
    card, _ = report_dirs
    (card / "card.json").write_text(json.dumps({"p99": float("nan"), "rows": [float("inf"), -float("inf"), 1.5],
                                                "nested": {"x": float("nan"), "ok": "NaN"}}))
    response = reports_client.get("/reports/card.json")
    assert response.status_code == 200
    assert b"NaN" not in response.content.replace(b'"NaN"', b"") and b"Infinity" not in response.content
    assert json.loads(response.content, parse_constant=pytest.fail) == {
        "p99": None, "rows": [None, None, 1.5], "nested": {"x": None, "ok": "NaN"}}


@pytest.mark.parametrize(("content", "mentions"), [
    (b'{"cut": ', "is not valid JSON"), (b"\xff\xfe not utf-8", "is not valid JSON"), (b"", "is not valid JSON"),
    (b"[1, 2]", "holds a JSON list, not an object"), (b"[" * 100_000, "is not valid JSON")])
def test_a_report_that_is_not_a_json_object_is_404(reports_client, report_dirs, content, mentions):
    _, loadtest = report_dirs
    (loadtest / "summary.json").write_bytes(content)
    response = reports_client.get("/reports/loadtest.json")
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "no_report" and mentions in response.json()["detail"]


def test_an_unreadable_report_is_404(reports_client, report_dirs):
    card, _ = report_dirs
    (card / "card.json").mkdir()
    response = reports_client.get("/reports/card.json")
    assert response.status_code == 404 and "could not be read" in response.json()["detail"]


@pytest.mark.parametrize("name", ["card.md", "summary.json", "CARD.JSON", "card.json.bak", "card.json%00", "card"])
def test_other_report_names_are_422(reports_client, report_dirs, name):
    (report_dirs[0] / "card.md").write_text("# card")
    response = reports_client.get(f"/reports/{name}")
    assert response.status_code == 422 and "path.name: Input should be 'card.json'" in response.json()["detail"]


def test_the_card_is_found_beside_the_bundles_root_by_default(bundles, tmp_path):
    out = tmp_path / "out"
    root = bundles.copy_root(out / "compressed")
    (out / "card.json").write_text('{"kind": "card"}')
    version = root / "versions" / bundles.v1
    standalone = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(version, standalone)
    for bundle in (root, root / "current", version):
        assert card_directory(Settings(bundle=bundle)) == out.absolute()
    assert card_directory(Settings(bundle=standalone)) is None
    assert card_directory(Settings(bundle=standalone, card_dir=tmp_path)) == tmp_path
    with app_client(root / "current", tmp_path) as client:
        assert client.get("/reports/card.json").json() == {"kind": "card"}
    with app_client(standalone, tmp_path) as client:
        response = client.get("/reports/card.json")
        assert response.status_code == 404 and "set RECSYS_CARD_DIR" in response.json()["detail"]


def test_report_settings_survive_the_trip_through_environment_variables(tmp_path, monkeypatch):
    settings = Settings(bundle=tmp_path, card_dir=tmp_path / "out", loadtest_dir=tmp_path / "lt")
    env = settings_to_env(settings)
    assert env["RECSYS_CARD_DIR"] == str(tmp_path / "out") and env["RECSYS_LOADTEST_DIR"] == str(tmp_path / "lt")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings
    monkeypatch.delenv("RECSYS_CARD_DIR")
    monkeypatch.delenv("RECSYS_LOADTEST_DIR")
    assert Settings().card_dir is None and Settings().loadtest_dir == Path("reports/loadtest")


# ---- all three ------------------------------------------------------------------------------------


def test_the_routes_are_in_the_schema_with_their_responses(client):
    paths = client.get("/openapi.json").json()["paths"]
    ok = {path: paths[path]["get"]["responses"]["200"]["content"] for path in ("/explain", "/users", "/reports/{name}")}
    assert ok["/explain"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ExplainResponse"}
    assert ok["/users"]["application/json"]["schema"] == {"$ref": "#/components/schemas/UsersResponse"}
    assert set(ok["/reports/{name}"]) == {"application/json", "image/png"}
    assert paths["/reports/{name}"]["get"]["parameters"][0]["schema"]["enum"] == list(ReportName.__args__)
    for path in ("/explain", "/users", "/reports/{name}"):
        assert "422" in paths[path]["get"]["responses"]
    assert "404" in paths["/reports/{name}"]["get"]["responses"]


def test_requests_are_counted_by_route(reports_client):
    reports_client.get("/reports/card.json")
    reports_client.get("/reports/loadtest.png")
    reports_client.get("/explain", params={"user": "u0", "items": "i1"})
    reports_client.get("/users")
    metrics = reports_client.get("/metrics").text
    assert 'recsys_http_requests_total{endpoint="/reports/{name}",status="404"} 2.0' in metrics
    assert 'recsys_http_requests_total{endpoint="/explain",status="200"} 1.0' in metrics
    assert 'recsys_http_requests_total{endpoint="/users",status="200"} 1.0' in metrics
    assert 'endpoint="unmatched"' not in metrics
