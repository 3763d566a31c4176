"""``python -m loadtest.ceiling --bundle PATH``: the framework's own ceiling, with no model work.

The same FastAPI + uvicorn stack as ``python -m serving`` answering ``GET /recommend`` from one
precomputed body (the bundle's most popular items, in the real response shape), so a load test
against it measures what HTTP parsing, validation and the framework cost on this machine. Known
users with history get ``fallback: null`` and others ``"popular"`` (one set lookup) so the load
test's shape checks hold; it does no ranking, so content checks (seen items, exclusions) do not.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Query, Response
from pydantic_core import to_json

from loadtest.traffic import Population
from recsys.bundle.load import read_titles
from recsys.bundle.manifest import BundleError
from recsys.bundle.publish import resolve_bundle
from serving.settings import EVENT_LOOP, fastapi_telemetry

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_K = 100
MAX_ID_LENGTH = 256


def precomputed_tails(bundle_dir: Path, people: Population) -> tuple[str, dict[bool, list[bytes]]]:
    """Per fallback flag and k, everything of the body after the ``user`` field."""
    top = people.top_items(MAX_K)
    titles: dict[str, str] = {}
    catalog = read_titles(bundle_dir)
    if catalog is not None:
        titles = {people.item_ids[int(row)]: str(title) for row, title in catalog.items()}
    items = [{"item_id": item, "score": score, "title": titles.get(item)} for item, score in top]
    version = f"{people.version}-ceiling"
    tails = {fallback: [b""] + [to_json({"items": items[:k], "model_version": version,
                                         "fallback": "popular" if fallback else None})[1:]
                                for k in range(1, MAX_K + 1)]
             for fallback in (False, True)}
    return version, tails


def create_ceiling_app(bundle: Path) -> FastAPI:
    bundle_dir = resolve_bundle(bundle)
    people = Population.from_bundle(bundle_dir)
    version, tails = precomputed_tails(bundle_dir, people)
    personal = people.users_with_history()
    version_body = to_json({"bundle_version": version, "kind": "ceiling"})
    app = FastAPI(title="recsys ceiling", summary="precomputed /recommend answers: the framework's ceiling",
                  telemetry=fastapi_telemetry(False))  # configured as the server is

    @app.get("/recommend")
    async def recommend(user: Annotated[str, Query(min_length=1, max_length=MAX_ID_LENGTH)],
                        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                        exclude: Annotated[str | None, Query()] = None) -> Response:
        body = b'{"user":' + to_json(user) + b"," + tails[user not in personal][k]
        return Response(body, media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"alive"}', media_type=JSON)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready","model_version":' + to_json(version) + b"}", media_type=JSON)

    @app.get("/version")
    async def version_info() -> Response:
        return Response(version_body, media_type=JSON)

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="bundle (or bundles root) to take ids and popular items from")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        app = create_ceiling_app(Path(args.bundle))
    except (BundleError, OSError) as exc:
        sys.stderr.write(f"python -m loadtest.ceiling: error: {exc}\n")
        return 2
    # The settings python -m serving uses for one worker (access log off).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, loop=EVENT_LOOP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
