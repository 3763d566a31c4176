"""The page at ``/`` and ``/docs`` in a real browser (Debian's Chromium, network off) against a real
``python -m serving`` on a tiny bundle whose catalogue holds a hostile title.

Without Chromium these tests skip on a developer's machine and fail under CI (``CI=true``), where
.ci/run installs it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from ops.browser import INSTALL_HINT, browser_available, chromium, docs_rendered, walk_page
from recsys.data.loaders import validate_items
from recsys.split import temporal_split
from tests.fixtures.bundles import publish_tiny_bundle, tiny_search_dir
from tests.fixtures.data import ROOT, checkerboard_dataset
from tests.fixtures.servers import running_server

pytestmark = pytest.mark.slow

# Markup in a catalogue title must be shown as text: if the page ever inserted it as HTML, the
# image's onerror would mark the page.
HOSTILE_ID = "i3"
HOSTILE_TITLE = '<img src=x onerror="document.body.dataset.pwned=1">item <b>3</b> & co'
CARD = ROOT / "reports" / "compression" / "ml-100k"
LOADTEST = ROOT / "reports" / "loadtest"


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if browser_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"Chromium is missing under CI: {INSTALL_HINT}")
    pytest.skip(INSTALL_HINT)


@pytest.fixture(scope="module")
def page_server(browser_ready, tmp_path_factory):
    """A server over the checkerboard bundle (search included, one hostile title), with the committed
    ml-100k card and load-test summary as its reports."""
    dataset = checkerboard_dataset()
    items = dataset.items.copy()
    items.loc[items["item_id"] == HOSTILE_ID, "title"] = HOSTILE_TITLE
    dataset = dataclasses.replace(dataset, items=validate_items(items))
    split = temporal_split(dataset)
    search = tiny_search_dir(dataset, split, tmp_path_factory.mktemp("browser-search"))
    root = tmp_path_factory.mktemp("browser-bundles")
    publish_tiny_bundle(root, dataset, split, seed=0, make_current=True, search=search)
    cards = tmp_path_factory.mktemp("browser-card")
    for name in ("card.json", "card.png", "search.png"):
        shutil.copy(CARD / name, cards / name)
    env = {"RECSYS_CARD_DIR": str(cards), "RECSYS_LOADTEST_DIR": str(LOADTEST),
           "RECSYS_EVENTS_DB": str(tmp_path_factory.mktemp("browser-events") / "events.sqlite")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with running_server("--bundle", str(root)) as (_, url):
            yield url


@pytest.fixture(scope="module")
def walk(page_server, tmp_path_factory):
    shots = tmp_path_factory.mktemp("browser-shots")
    with chromium() as driver:
        return walk_page(driver, page_server, user="u0", query="item 3", shots=shots)


def test_the_page_shows_recommendations_with_their_reasons(walk):
    assert walk.version
    assert len(walk.recommendations) == 10
    # u0 (group a: items i0-i9) has seen all but its held-out a-item: the bundle's answer starts with
    # what is left of group a, and the page explains each by u0's own history, none by itself.
    assert all(row["title"] for row in walk.recommendations)
    explained = [row for row in walk.recommendations if row["because"].startswith("because: item")]
    assert explained, walk.recommendations
    for row in explained:
        assert row["title"] not in row["because"].removeprefix("because: ").split(" · ")


def test_a_search_returns_results(walk):
    assert walk.search, walk.search_status
    assert "results for “item 3”" in walk.search_status
    assert any(row["item"] == HOSTILE_ID for row in walk.search)


def test_catalogue_markup_is_shown_as_text(walk):
    hostile = [row for row in walk.search if row["item"] == HOSTILE_ID]
    assert hostile and hostile[0]["title"] == HOSTILE_TITLE
    assert walk.body_data == {"ready": "true"}  # no "pwned": the title's onerror never ran


def test_similar_items_open_from_an_item(walk):
    assert walk.similar
    assert walk.recommendations[0]["title"] in walk.similar_of
    assert walk.recommendations[0]["item"] not in [row["item"] for row in walk.similar]


def test_a_click_changes_the_recommendations(walk):
    before = [row["item"] for row in walk.recommendations]
    after = [row["item"] for row in walk.after_click]
    assert walk.clicked == before[0]
    assert walk.clicked not in after  # the clicked item is now history: not recommended again
    assert any(row["new"] for row in walk.after_click)  # what entered the list is marked
    assert walk.activity and "clicked" in walk.activity[0]


def test_the_card_and_load_test_are_shown(walk):
    assert walk.card_rows >= 2
    assert walk.loadtest_rows >= 2
    assert walk.images == {"card-img": True, "search-img": True, "loadtest-img": True}


def test_the_page_has_no_console_errors(walk):
    assert walk.console_errors == []
    assert len(walk.screenshots) == 2


def test_docs_render_with_the_network_off(page_server):
    with chromium() as driver:
        title, errors = docs_rendered(driver, page_server)
    assert title.startswith("recsys-compressed")
    assert errors == []


def test_the_browser_really_has_no_network(page_server):
    # What makes the /docs test mean "offline": a CDN address fails to load in this browser, so a
    # page needing one would not render (FastAPI's default /docs: "SwaggerUIBundle is not defined").
    with chromium() as driver:
        driver.get(page_server + "/healthz")
        outcome = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css', {mode: 'no-cors'})"
            ".then(() => done('loaded'), (error) => done('failed: ' + error))")
    assert outcome.startswith("failed"), outcome
