"""The page at ``/``: one HTML file, a script and a stylesheet shipped with the package.

No build step and no CDN: the files are read once from ``serving/web/static`` and served by the same
app, and the script talks only to the service's JSON API (recommend, explain, similar, search,
events, users, version, reports). The routes are in the OpenAPI schema, so the API fuzz tests
walk them too.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from serving.schemas import ErrorResponse

STATIC = Path(__file__).parent / "static"
# The page and its assets change with the package, not per request: revalidate on every load so
# an upgraded server is never shown with a stale script.
NO_CACHE = {"Cache-Control": "no-cache"}


class Asset(StrEnum):
    script = "app.js"
    stylesheet = "app.css"


MEDIA_TYPES = {Asset.script: "text/javascript; charset=utf-8", Asset.stylesheet: "text/css; charset=utf-8"}


def build_web_router() -> APIRouter:
    page = (STATIC / "index.html").read_bytes()
    assets = {asset: (STATIC / asset.value).read_bytes() for asset in Asset}
    router = APIRouter(tags=["page"])

    @router.get("/", response_class=HTMLResponse, responses={200: {"content": {"text/html": {}}}})
    async def index() -> Response:
        """The web page: a user's recommendations and why, similar items, search, clicks, and the
        served bundle's report card and load test."""
        return HTMLResponse(page, headers=NO_CACHE)

    @router.get("/ui/{asset}", response_class=Response,
                responses={200: {"content": {"text/javascript": {}, "text/css": {}}}, 422: {"model": ErrorResponse}})
    async def ui_asset(asset: Asset) -> Response:
        """The page's script or stylesheet."""
        return Response(assets[asset], media_type=MEDIA_TYPES[asset], headers=NO_CACHE)

    return router
