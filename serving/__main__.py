"""``python -m serving --bundle PATH [--host 127.0.0.1] [--port 8000] [--workers N] [--events-db PATH]``.

Other settings come from ``RECSYS_*`` variables (e.g. ``RECSYS_ADMIN_TOKEN``: a token on the command
line would show up in ``ps``). The bundle is resolved and verified before uvicorn starts, so a bad
path fails with one line and exit status 2 instead of a traceback per worker.
"""

import argparse
import copy
import logging
import os
import sys

import uvicorn
from pydantic import ValidationError

from recsys.bundle.manifest import BundleError, load_manifest
from recsys.bundle.publish import resolve_bundle
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
    parser.add_argument("--events-db", default=None, help="SQLite file for POST /events [RECSYS_EVENTS_DB]")
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
    overrides = {"bundle": args.bundle} | ({"events_db": args.events_db} if args.events_db else {})
    try:
        settings = Settings(**overrides)
        # Full check (sha256 of every file) up front: a damaged bundle fails here, not in N workers.
        load_manifest(resolve_bundle(settings.bundle), verify=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _fail(f"setting {'.'.join(map(str, first['loc']))}: {first['msg']} (check the RECSYS_* variables)")
    except (BundleError, OSError) as exc:
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


def _fail(message: str) -> int:
    sys.stderr.write(f"python -m serving: error: {' '.join(message.split())}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
