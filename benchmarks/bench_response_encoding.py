"""Which way of writing the /recommend body is fastest: pre-serialised JSON or a declared response model.

    python -m benchmarks.bench_response_encoding --items 20 --requests 20000

One-route FastAPI apps answer the same ``Recommendation`` (no model call, so only routing and
encoding differ) and are driven in-process through raw ASGI calls:

* ``preserialised``: ``serving.routes.recommend_json`` (plain dicts -> ``pydantic_core.to_json``)
  -> ``Response(bytes)``; what serving does;
* ``stdlib_json``: the same dicts through ``json.dumps`` -> ``Response(bytes)``;
* ``model``: return a ``RecommendResponse`` instance (FastAPI validates it, dumps JSON in Rust);
* ``dict``: return a plain dict and let ``response_model`` validate and dump it.

Scores are float32 values widened to float, as the model returns them. Prints the median and
p99 microseconds per request, in rounds interleaved so machine load hits all variants alike
(on a shared machine, compare medians; the p99 is mostly other processes).
"""

import argparse
import asyncio
import json
import logging
import statistics
import time

import numpy as np
from fastapi import FastAPI, Response

from recsys.pipeline.served import Recommendation
from serving.routes import _items, json_response, recommend_json
from serving.schemas import ItemScore, RecommendResponse

log = logging.getLogger("benchmarks.bench_response_encoding")

VERSION = "20260101T000000Z-0123abcd"


def sample_recommendation(n_items: int) -> Recommendation:
    scores = np.linspace(0.9, 0.1, n_items, dtype=np.float32) + np.float32(1e-3) / 3
    return Recommendation([f"item-{i:06d}" for i in range(n_items)], [float(s) for s in scores],
                          [f"Product title number {i}" for i in range(n_items)])


def build_apps(rec: Recommendation) -> dict[str, FastAPI]:
    preserialised, stdlib, model, plain = FastAPI(), FastAPI(), FastAPI(), FastAPI()

    @preserialised.get("/recommend", response_model=RecommendResponse)
    async def recommend_preserialised(user: str) -> Response:
        return json_response(recommend_json(user, rec, VERSION))

    @stdlib.get("/recommend", response_model=RecommendResponse)
    async def recommend_stdlib(user: str) -> Response:
        doc = {"user": user, "items": _items(rec), "model_version": VERSION, "fallback": rec.fallback}
        return json_response(json.dumps(doc, separators=(",", ":")).encode())

    @model.get("/recommend", response_model=RecommendResponse)
    async def recommend_model(user: str) -> RecommendResponse:
        rows = zip(rec.items, rec.scores, rec.titles, strict=True)
        items = [ItemScore(item_id=str(i), score=s, title=t) for i, s, t in rows]
        return RecommendResponse(user=user, items=items, model_version=VERSION, fallback=rec.fallback)

    @plain.get("/recommend", response_model=RecommendResponse)
    async def recommend_dict(user: str) -> dict:
        rows = zip(rec.items, rec.scores, rec.titles, strict=True)
        items = [{"item_id": str(i), "score": s, "title": t} for i, s, t in rows]
        return {"user": user, "items": items, "model_version": VERSION, "fallback": rec.fallback}

    return {"preserialised": preserialised, "stdlib_json": stdlib, "model": model, "dict": plain}


async def call(app: FastAPI, query: bytes) -> bytes:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/recommend", "raw_path": b"/recommend", "query_string": query, "root_path": "",
             "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    body = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(body)


async def run(n_items: int, n_requests: int, rounds: int) -> dict[str, dict[str, float]]:
    apps = build_apps(sample_recommendation(n_items))
    bodies = {name: await call(app, b"user=u1") for name, app in apps.items()}
    reference = RecommendResponse.model_validate_json(bodies["model"])
    for name, body in bodies.items():  # same JSON document from every variant
        assert RecommendResponse.model_validate_json(body) == reference, name
    samples: dict[str, list[float]] = {name: [] for name in apps}
    per_round = max(1, n_requests // rounds)
    for _ in range(rounds):
        for name, app in apps.items():
            for _ in range(per_round):
                started = time.perf_counter_ns()
                await call(app, b"user=u1")
                samples[name].append((time.perf_counter_ns() - started) / 1e3)
    return {name: {"median_us": statistics.median(values),
                   "p99_us": statistics.quantiles(values, n=100)[98],
                   "bytes": len(bodies[name])}
            for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--requests", type=int, default=20_000, help="per variant")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = asyncio.run(run(args.items, args.requests, args.rounds))
    fastest = min(results, key=lambda name: results[name]["median_us"])
    for name, result in results.items():
        log.info("%-14s median %6.1f us  p99 %6.1f us  %d bytes%s", name, result["median_us"], result["p99_us"],
                 result["bytes"], "  <- fastest" if name == fastest else "")


if __name__ == "__main__":
    main()
