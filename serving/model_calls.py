"""What the batcher runs: a batch of parsed /recommend, /similar and /search requests -> their JSON bodies.

Requests are grouped by endpoint and by the bundle they were parsed against (a hot swap may land
between two requests of one batch), each group answered by one pass of that bundle's pipeline
(`ServingModel.recommend_many` / `similar_many` / `search_many`), and every answer is encoded
here, as part of the batch, so the route only wraps bytes in a response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import to_json

from recsys.pipeline.served import Ask, Recommendation, SearchAsk
from serving.metrics import ServingMetrics
from serving.state import LiveModel


@dataclass(frozen=True)
class RecommendCall:
    live: LiveModel
    user: str | None  # as the client sent it (echoed in the body)
    ask: Ask


@dataclass(frozen=True)
class SimilarCall:
    live: LiveModel
    item: str
    index: int  # the item's row in the bundle
    k: int


@dataclass(frozen=True)
class SearchCall:
    live: LiveModel
    query: str  # as the client sent it (echoed in the body)
    user: str | None
    ask: SearchAsk


ModelCall = RecommendCall | SimilarCall | SearchCall


def _items(rec: Recommendation) -> list[dict[str, Any]]:
    titles = rec.titles if rec.titles is not None else [None] * len(rec.items)
    return [{"item_id": str(item), "score": score, "title": title}
            for item, score, title in zip(rec.items, rec.scores, titles, strict=True)]


def recommend_json(user: str | None, rec: Recommendation, version: str) -> bytes:
    """The RecommendResponse body from plain dicts by pydantic-core's Rust encoder.

    Same JSON as the model, without validating one; the stdlib encoder is slower here mostly
    because repr() of float32-derived scores is slow.
    """
    return to_json({"user": user, "items": _items(rec), "model_version": version, "fallback": rec.fallback})


def similar_json(item: str, rec: Recommendation, version: str) -> bytes:
    return to_json({"item": item, "items": _items(rec), "model_version": version})


def search_json(call: SearchCall, rec: Recommendation, version: str) -> bytes:
    return to_json({"query": call.query, "user": call.user, "items": _items(rec), "model_version": version,
                    "personalised": call.ask.personal})


def run_calls(calls: Sequence[ModelCall], metrics: ServingMetrics) -> list[bytes]:
    """One JSON body per call, in order."""
    groups: dict[tuple[type, int], list[int]] = {}
    for position, call in enumerate(calls):
        groups.setdefault((type(call), id(call.live)), []).append(position)
    bodies: list[bytes] = [b""] * len(calls)
    for (kind, _), positions in groups.items():
        group = [calls[position] for position in positions]
        answers = _ANSWER[kind](group, metrics)
        for position, body in zip(positions, answers, strict=True):
            bodies[position] = body
    return bodies


def _recommend(calls: list[RecommendCall], metrics: ServingMetrics) -> list[bytes]:
    live = calls[0].live
    recs = live.model.recommend_many([call.ask for call in calls])
    metrics.observe_batch("/recommend", len(calls))
    metrics.observe_stages("/recommend", recs[0].timings_ms)
    for rec in recs:
        if rec.fallback:
            metrics.observe_fallback(rec.fallback)
    return [recommend_json(call.user, rec, live.version) for call, rec in zip(calls, recs, strict=True)]


def _similar(calls: list[SimilarCall], metrics: ServingMetrics) -> list[bytes]:
    live = calls[0].live
    recs = live.model.similar_many([(call.index, call.k) for call in calls])
    metrics.observe_batch("/similar", len(calls))
    return [similar_json(call.item, rec, live.version) for call, rec in zip(calls, recs, strict=True)]


def _search(calls: list[SearchCall], metrics: ServingMetrics) -> list[bytes]:
    live = calls[0].live
    recs = live.model.search_many([call.ask for call in calls])
    metrics.observe_batch("/search", len(calls))
    metrics.observe_stages("/search", recs[0].timings_ms)
    return [search_json(call, rec, live.version) for call, rec in zip(calls, recs, strict=True)]


_ANSWER: dict[type, Callable[[Any, ServingMetrics], list[bytes]]] = {
    RecommendCall: _recommend, SimilarCall: _similar, SearchCall: _search}
