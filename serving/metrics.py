"""Prometheus metrics of one app, in its own registry (so tests and several apps never collide).

Each worker process has its own registry: with ``--workers N`` a scrape sees one worker.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.bundle.manifest import Manifest

__all__ = ["CONTENT_TYPE_LATEST", "MetricsMiddleware", "ServingMetrics"]

# Requests take well under a millisecond up to a few hundred ms (a reload competing for the CPU).
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
QUEUE_BUCKETS = (*STAGE_BUCKETS, 0.25, 0.5, 1.0)  # up to and past the default deadline (0.5 s)
UNMATCHED = "unmatched"


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_http_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("recsys_http_request_duration_seconds",
                                 "Time from request to the end of the response, by endpoint and status",
                                 ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.stages = Histogram("recsys_stage_duration_seconds",
                                "Time in each stage of the model's path, per batch of requests (timings_ms)",
                                ["endpoint", "stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("recsys_batch_size", "Requests answered by one pass of the model",
                                    ["endpoint"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_wait = Histogram("recsys_queue_wait_seconds", "Time a request waited for the model",
                                    buckets=QUEUE_BUCKETS, registry=self.registry)
        self.shed = Counter("recsys_shed_requests", "Requests answered 503 by load shedding, by reason "
                            "(queue_full, deadline)", ["reason"], registry=self.registry)
        self.fallbacks = Counter("recsys_fallbacks", "Responses served from a fallback instead of the model",
                                 ["kind"], registry=self.registry)
        self.reloads = Counter("recsys_reloads", "Bundle reload attempts by outcome (success, unchanged, refused)",
                               ["outcome"], registry=self.registry)
        self.model = Info("recsys_model", "The bundle being served", registry=self.registry)
        self.overlay_users = Gauge("recsys_overlay_users", "Users in this worker's real-time history overlay",
                                   registry=self.registry)
        self.overlay_events = Gauge("recsys_overlay_events", "Events in this worker's real-time history overlay",
                                    registry=self.registry)
        self.overlay_evicted = Gauge("recsys_overlay_evicted_users",
                                     "Users dropped from the overlay at its cap since the bundle was loaded",
                                     registry=self.registry)
        self.overlay_last_id = Gauge("recsys_overlay_last_event_id", "The event store id the overlay has read up to",
                                     registry=self.registry)
        self._stage_children: dict[tuple[str, str], Histogram] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(endpoint, code).inc()
        self.latency.labels(endpoint, code).observe(seconds)

    def observe_stages(self, endpoint: str, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            child = self._stage_children.get((endpoint, stage))
            if child is None:
                child = self._stage_children[(endpoint, stage)] = self.stages.labels(endpoint, stage)
            child.observe(ms / 1000.0)

    def observe_batch(self, endpoint: str, size: int) -> None:
        self.batch_size.labels(endpoint).observe(size)

    def observe_queue(self, waits_s: list[float]) -> None:
        for wait in waits_s:
            self.queue_wait.observe(wait)

    def observe_shed(self, reason: str) -> None:
        self.shed.labels(reason).inc()

    def observe_fallback(self, kind: str) -> None:
        self.fallbacks.labels(kind).inc()

    def observe_reload(self, outcome: str) -> None:
        self.reloads.labels(outcome).inc()

    def set_model(self, manifest: Manifest) -> None:
        self.model.info({"bundle_version": manifest.bundle_version, "kind": manifest.kind,
                         "created_at": manifest.created_at})

    def observe_overlay(self, overlay) -> None:
        self.overlay_users.set(overlay.n_users)
        self.overlay_events.set(overlay.n_events)
        self.overlay_evicted.set(overlay.evicted_users)
        self.overlay_last_id.set(overlay.last_id)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request (plain ASGI: BaseHTTPMiddleware costs far more per request).

    Requests are labelled by route (its path template) and paths that are not routes are counted
    as ``unmatched``, so random URLs cannot grow the label set.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, endpoints: Collection[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            self.metrics.observe_request(self._endpoint(scope), status, time.perf_counter() - started)

    def _endpoint(self, scope: Scope) -> str:
        """The path, or for a path with parameters (/reports/card.json) the route it matched (its
        template, /reports/{name}: the router records it in the scope)."""
        path = scope["path"]
        if path in self.endpoints:
            return path
        template = getattr(scope.get("route"), "path", None)
        return template if template in self.endpoints else UNMATCHED
