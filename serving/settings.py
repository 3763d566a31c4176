"""Service settings from ``RECSYS_*`` environment variables (or passed in directly by tests)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "RECSYS_"
# asyncio's loop, not uvloop: libuv accepts one connection per turn of the loop (libuv PR #3696),
# and under load a turn of this server runs a whole batch, so a burst of new connections waited
# seconds in the kernel's accept queue (ml-100k compressed, 64 closed-loop Locust users: p99
# 1.1-1.6 s with uvloop, 0.28 s with asyncio, max req/s within noise; 400 users: up to 25 s).
# asyncio accepts everything waiting in one turn.
EVENT_LOOP = "asyncio"


def fastapi_telemetry(enabled: bool) -> dict[str, bool]:
    """FastAPI's OpenTelemetry options. Off, FastAPI skips its per-request check for a configured
    provider (an environment lookup and two provider lookups: ~5 % of a /recommend at max load)."""
    return {"tracing": enabled, "metrics": enabled, "logs": enabled}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    bundle: Path = Field(description="a bundles root (serves its `current` version) or one bundle directory")
    events_db: Path = Path("data/events.sqlite")
    events_url: str | None = Field(None, pattern=r"^postgres(ql)?://", description="postgresql://user@host:port/db: "
                                   "keep events in PostgreSQL (replicas on several machines) instead of the "
                                   "SQLite file events_db")
    admin_token: SecretStr | None = Field(None, description="unset: /admin routes answer 403")
    threads: int = Field(1, ge=1, description="ONNX Runtime and FAISS threads per worker process")
    max_k: int = Field(100, ge=1, le=10_000)
    max_id_length: int = Field(256, ge=1, le=4096)
    max_exclude: int = Field(1000, ge=0, description="most item ids one /recommend may exclude")
    max_events_per_request: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    watch_current: bool = Field(False, description="poll the bundles root's `current` pointer and hot-reload")
    watch_interval_s: float = Field(5.0, gt=0)
    staggered_reload: bool = Field(False, description="replicas behind a load balancer sharing this bundles root: "
                                   "one reloads at a time (a lock file in the root) and answers /readyz 503 "
                                   "while it loads, so the others keep the traffic")
    reload_settle_s: float = Field(1.0, ge=0, description="with staggered_reload: how long a replica keeps the "
                                   "lock after it is ready again (at least the load balancer's health-check "
                                   "interval, so it is back in rotation before the next replica leaves)")
    precompute_users: bool = True
    opentelemetry: bool = Field(False, description="FastAPI's OpenTelemetry spans and metrics, for a process "
                                "with an OpenTelemetry provider configured (Prometheus /metrics is always on)")
    max_batch: int = Field(32, ge=1, description="most /recommend or /similar requests answered by one pass of "
                           "the model (1: one at a time)")
    max_queue: int = Field(128, ge=1, description="requests waiting for the model past which new ones get 503")
    queue_deadline_s: float = Field(0.5, gt=0, description="a request that waited this long for the model gets "
                                    "503 instead of a late answer")
    overlay_poll_s: float = Field(0.1, gt=0, description="how often each worker reads new events into the "
                                  "real-time history (an event reaches every worker's answers within this)")
    overlay_max_users: int = Field(100_000, ge=1, description="users kept in the real-time history (least "
                                   "recently active dropped first)")
    overlay_max_events: int = Field(50, ge=1, description="events kept per user in the real-time history")
    card_dir: Path | None = Field(None, description="where GET /reports finds card.json, card.png and search.png "
                                  "(`python -m compression --out OUT` writes them in OUT, beside the bundles "
                                  "roots OUT/teacher and OUT/compressed); unset: the parent of the configured "
                                  "bundles root (see `serving.reports.card_directory`)")
    loadtest_dir: Path = Field(Path("reports/loadtest"), description="where GET /reports finds the load test's "
                               "summary.json and summary.png (`python -m loadtest.compare --out DIR`)")

    @property
    def event_store(self) -> str | Path:
        """Where events go, for `recsys.data.events.open_event_store`: the PostgreSQL URL when set."""
        return self.events_url or self.events_db


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The ``RECSYS_*`` variables that rebuild ``settings`` in another process (uvicorn workers)."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env
