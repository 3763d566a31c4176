"""The page's files and the offline API docs, over the app (tests/serving/test_browser.py runs them
in Chromium)."""

from __future__ import annotations

import re

import pytest

from serving.web import STATIC, Asset

# Any absolute address in the page's files would be a request to another host (a CDN, a font
# service): the page must work on a machine with no network.
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|fetch\(\s*["'`]https?:""")
# The DOM calls that parse a string as HTML.
HTML_SINKS = re.compile(r"\.(?:inner|outer)HTML\s*\+?=|insertAdjacentHTML\(|document\.write(?:ln)?\("
                        r"|createContextualFragment")


def test_the_page_is_served_at_the_root(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'src="ui/app.js"' in response.text and 'href="ui/app.css"' in response.text
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(("asset", "media_type"), [("app.js", "text/javascript"), ("app.css", "text/css")])
def test_the_page_assets_are_served(client, asset, media_type):
    response = client.get(f"/ui/{asset}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.content == (STATIC / asset).read_bytes()


@pytest.mark.parametrize("name", ["index.html", "../app.py", "app.jsx", "%2e%2e%2fapp.py"])
def test_only_the_named_assets_are_served(client, name):
    response = client.get(f"/ui/{name}")
    assert response.status_code in (404, 422)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize("name", ["index.html", *(asset.value for asset in Asset)])
def test_the_page_loads_nothing_from_another_host(name):
    text = (STATIC / name).read_text()
    assert not EXTERNAL.search(text), EXTERNAL.search(text)


def test_the_page_never_inserts_text_as_html():
    # Catalogue titles and user ids reach the DOM through textContent only (issue: escaping).
    script = (STATIC / "app.js").read_text()
    assert not HTML_SINKS.search(script), HTML_SINKS.search(script)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_load_their_assets_from_this_server(client, path):
    page = client.get(path)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)
    assert assets, page.text
    for asset in assets:
        assert asset.startswith("/"), f"{path} loads {asset} from another host"
        assert client.get(asset).status_code == 200, asset
