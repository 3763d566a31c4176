"""``create_app(settings)``: the FastAPI service over one live bundle and the event store.

The lifespan loads the bundle once (startup fails if it cannot be loaded or smoke-tested), opens
the event store and starts the optional ``current`` watcher. Tests run it with
``with TestClient(create_app(Settings(bundle=...))) as client:``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from recsys.data.events import open_event_store, redacted
from recsys.index import set_faiss_threads
from serving.batcher import Batcher, BatchStats, ShedWhenFull
from serving.errors import BodySizeLimit, install_error_handlers
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.model_calls import run_calls
from serving.overlay import OverlayFeeder
from serving.routes import MODEL_ROUTES, Services, build_router
from serving.settings import Settings, fastapi_telemetry
from serving.state import CurrentWatcher, ModelState
from serving.web import build_web_router

log = logging.getLogger(__name__)

# The API docs pages. FastAPIOffline serves Swagger UI's and ReDoc's files from its own package
# (FastAPI's default pages load them from a CDN, so /docs was blank on a machine offline).
DOCS_URL, REDOC_URL = "/docs", "/redoc"


def create_app(settings: Settings) -> FastAPI:
    metrics = ServingMetrics()
    services = Services(settings, ModelState(settings, metrics), metrics, model_batcher(settings, metrics))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One thread per worker: throughput comes from worker processes, not threads per query.
        # OpenMP keeps this per OS thread, so it is set here, on the event-loop thread that runs
        # the batcher's searches (load_serving_model's call only covers the loading thread).
        set_faiss_threads(settings.threads)
        services.batcher.start()
        store = open_event_store(settings.event_store)
        services.state.events = store  # the first bundle's real-time history is replayed from it
        try:
            # Only the version is kept: a reference held by this generator, which lives as long as
            # the app, would keep the first bundle in memory after every reload.
            version = (await run_in_threadpool(services.state.load_initial)).version
        except Exception as exc:
            log.error("cannot start: bundle %s could not be served: %s", settings.bundle, exc)
            store.close()
            services.batcher.close()
            raise
        services.events = store
        services.feeder = OverlayFeeder(lambda: services.state.live.overlay if services.state.live else None,
                                        store, settings.overlay_poll_s, on_poll=metrics.observe_overlay)
        services.feeder.start()
        watcher = CurrentWatcher(services.state, settings.watch_interval_s) if settings.watch_current else None
        if watcher:
            watcher.start()
        log.info("serving bundle %s; events go to %s", version, redacted(settings.event_store))
        try:
            yield
        finally:
            if watcher:
                watcher.stop()
            services.feeder.stop()
            services.events = services.feeder = None
            store.close()
            services.batcher.close()

    app = FastAPIOffline(DOCS_URL, REDOC_URL, title="recsys-compressed",
                         summary="Recommendations from a compressed model bundle",
                         telemetry=fastapi_telemetry(settings.opentelemetry), lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    router = build_router(services)
    app.include_router(router)
    web = build_web_router()
    app.include_router(web)
    endpoints = [route.path for route in [*router.routes, *web.routes]] + [app.openapi_url, DOCS_URL, REDOC_URL]
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ShedWhenFull, batcher=services.batcher, paths=MODEL_ROUTES)  # inside metrics: shed counted
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=[path for path in endpoints if path])
    return app


def model_batcher(settings: Settings, metrics: ServingMetrics) -> Batcher:
    """The worker's one model queue (`serving.batcher`), its batches and shed requests in the metrics."""

    def observe(stats: BatchStats) -> None:
        metrics.observe_queue(stats.waits_s)

    return Batcher(lambda calls: run_calls(calls, metrics), settings.max_batch, settings.max_queue,
                   settings.queue_deadline_s, on_batch=observe, on_shed=metrics.observe_shed)


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:create_app_from_env`` (each worker reads ``RECSYS_*``)."""
    return create_app(Settings())
