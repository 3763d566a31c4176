"""``python -m serving --bundle PATH [--host 127.0.0.1] [--port 8000] [--workers N] [--events-db PATH]
[--events-url postgresql://user@host:port/db]``.

Other settings come from ``RECSYS_*`` variables (e.g. ``RECSYS_ADMIN_TOKEN``: a token on the command
line would show up in ``ps``; so would a password in ``--events-url``: prefer ``RECSYS_EVENTS_URL``
or a ``~/.pgpass``). The bundle is resolved and verified, and the event store opened once, before
uvicorn starts, so a bad path or an unreachable database fails with one line and exit status 2
instead of a traceback per worker.
"""

import argparse
import copy
import logging
import os
import sqlite3
import sys

import uvicorn
from pydantic import ValidationError

from recsys.bundle.manifest import BundleError, load_manifest
from recsys.bundle.publish import resolve_bundle
from recsys.data.events import open_event_store, redacted
from serving.settings import EVENT_LOOP, Settings, settings_to_env

log = logging.getLogger("serving")

APP_FACTORY = "serving.app:create_app_from_env"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve recommendations from a bundle.")
    parser.add_argument("--bundle", default=os.environ.get("RECSYS_BUNDLE"),
                        help="bundles root (serves `current`) or a bundle directory [RECSYS_BUNDLE]")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one model copy each)")
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--events-db", default=None, help="SQLite file for POST /events [RECSYS_EVENTS_DB] "
                       "(unused when an events URL is set)")
    store.add_argument("--events-url", default=None, help="postgresql://user@host:port/db: events in PostgreSQL "
                       "instead of the SQLite file [RECSYS_EVENTS_URL]")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def log_config(level: str) -> dict:
    """uvicorn's logging plus our packages' loggers, applied in every worker process."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for package in ("serving", "recsys"):
        config["loggers"][package] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.bundle:
        return _fail("no bundle given: pass --bundle PATH or set RECSYS_BUNDLE")
    given = {"bundle": args.bundle, "events_db": args.events_db, "events_url": args.events_url}
    try:
        settings = Settings(**{name: value for name, value in given.items() if value})
        # Full check (sha256 of every file) up front: a damaged bundle fails here, not in N workers.
        load_manifest(resolve_bundle(settings.bundle), verify=True)
        check_event_store(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _fail(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']} (check the RECSYS_* variables)")
    except (BundleError, OSError, sqlite3.Error) as exc:  # EventStoreUnavailable is an OSError
        return _fail(str(exc))
    if args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    common = {"host": args.host, "port": args.port, "log_config": log_config(args.log_level),
              "log_level": args.log_level, "access_log": False, "loop": EVENT_LOOP}
    if args.workers == 1:
        from serving.app import create_app

        uvicorn.run(create_app(settings), **common)
    else:
        # Workers are separate processes: each builds its own app from the same RECSYS_* settings.
        os.environ.update(settings_to_env(settings))
        uvicorn.run(APP_FACTORY, factory=True, workers=args.workers, **common)
    return 0


def check_event_store(settings: Settings) -> None:
    """Open the store once: creates (or migrates) its table, and names an unreachable database up front."""
    with open_event_store(settings.event_store):
        log.debug("event store %s is reachable", redacted(settings.event_store))


def _fail(message: str) -> int:
    sys.stderr.write(f"python -m serving: error: {' '.join(message.split())}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
