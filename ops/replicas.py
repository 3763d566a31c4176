"""N serving replicas behind HAProxy, sharing nothing but the bundles root (and the event store).

    python -m ops.replicas --bundle artifacts/ml-100k/bundles/compressed --replicas 2 --port 8000

starts N ``python -m serving`` processes on 127.0.0.1 (free ports), each watching the root's
``current`` pointer with staggered reloads (`serving.state.ReloadLease`), and HAProxy in front on
``--port``: it balances by least connections, health-checks ``GET /readyz`` every 250 ms (one failure
takes a replica out of rotation, one success puts it back) and retries a request on another
replica when the connection failed or the answer was 503 (nothing was processed in either case).
On many machines, run `python -m serving` with ``RECSYS_STAGGERED_RELOAD=true`` and
``RECSYS_WATCH_CURRENT=true`` on each, the bundles root on shared storage, and `haproxy_config`'s
output (one ``server`` line per machine) in your HAProxy.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from loadtest.harness import HarnessError, free_port, running_server, stop

log = logging.getLogger(__name__)

HAPROXY = "haproxy"
INSTALL_HINT = "install Debian's load balancer: apt-get install -y haproxy (.ci/run does)"
CHECK_INTERVAL_MS = 250
WATCH_INTERVAL_S = 1.0
START_TIMEOUT_S = 30.0


class BalancerMissing(RuntimeError):
    pass


def haproxy_available() -> bool:
    return shutil.which(HAPROXY) is not None


def haproxy_config(port: int, stats_port: int, backends: Sequence[str], check_ms: int = CHECK_INTERVAL_MS) -> str:
    """The balancer's configuration: ``backends`` are ``host:port`` of the replicas."""
    servers = "\n".join(f"    server r{i} {address} check" for i, address in enumerate(backends))
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A retry goes to another replica. Only where nothing was processed: the connection failed, or the
    # replica answered 503 (shed, or not ready). Not on a timeout or an empty answer: a POST /events
    # may have been stored (the client retries those with its event ids).
    retries 2
    option redispatch 1
    retry-on conn-failure 503

frontend recsys
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_ms}ms fastinter {check_ms}ms downinter {check_ms}ms fall 1 rise 1
{servers}

listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


@dataclass
class Replicas:
    url: str  # the load balancer
    replicas: list[str]  # each replica's own URL, in backend order (r0, r1, ...)
    stats_url: str

    def server_status(self) -> dict[str, str]:
        """HAProxy's view of each replica now: ``{"r0": "UP", "r1": "DOWN", ...}``."""
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{self.stats_url};csv",
                                                                                timeout=5) as answer:
            text = answer.read().decode().lstrip("# ")
        return {row["svname"]: row["status"].split(" ")[0] for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}


def replica_env(check_ms: int = CHECK_INTERVAL_MS) -> dict[str, str]:
    """What makes a `python -m serving` a replica: it follows ``current``, one reload at a time."""
    return {"RECSYS_WATCH_CURRENT": "true", "RECSYS_WATCH_INTERVAL_S": str(WATCH_INTERVAL_S),
            "RECSYS_STAGGERED_RELOAD": "true", "RECSYS_RELOAD_SETTLE_S": str(2 * check_ms / 1000)}


@contextmanager
def running_replicas(bundle: Path, n: int, events: str | Path, logs: Path, port: int = 0,
                     env: dict[str, str] | None = None) -> Iterator[Replicas]:
    """``n`` replicas of ``bundle`` (a bundles root) and HAProxy in front on ``port`` (0: a free one);
    ``events`` is the store they share: a SQLite file, or a ``postgresql://`` URL."""
    if not haproxy_available():
        raise BalancerMissing(f"no `{HAPROXY}` on PATH: {INSTALL_HINT}")
    with ExitStack() as stack:
        urls = []
        for i in range(n):
            command = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1",
                       "--port", "0", *store_flag(events)]
            _, url = stack.enter_context(running_server(command, logs / f"replica-{i}.log",
                                                        env={**replica_env(), **(env or {})}))
            urls.append(url)
        port = port or free_port()
        stats_port = free_port()
        config = logs / "haproxy.cfg"
        config.write_text(haproxy_config(port, stats_port, [url.removeprefix("http://") for url in urls]))
        balancer = stack.enter_context(_haproxy(config, logs / "haproxy.log"))
        replicas = Replicas(f"http://127.0.0.1:{port}", urls, f"http://127.0.0.1:{stats_port}/stats")
        _wait_all_up(replicas, balancer)
        log.info("HAProxy on %s in front of %s", replicas.url, ", ".join(urls))
        yield replicas


def store_flag(events: str | Path) -> list[str]:
    """`python -m serving`'s flag for the event store at ``events``."""
    return ["--events-url", str(events)] if "://" in str(events) else ["--events-db", str(events)]


@contextmanager
def _haproxy(config: Path, log_path: Path) -> Iterator[subprocess.Popen]:
    with open(log_path, "w", encoding="utf-8") as sink:
        process = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def _wait_all_up(replicas: Replicas, balancer: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    status: dict[str, str] | str = "not answering"
    while time.monotonic() < deadline:
        if balancer.poll() is not None:
            raise HarnessError(f"haproxy exited with status {balancer.returncode} (see haproxy.log)")
        try:
            status = replicas.server_status()
            if status and all(state == "UP" for state in status.values()):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise HarnessError(f"HAProxy did not see every replica up within {START_TIMEOUT_S:.0f} s: {status}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="a bundles root (its `current` is served and followed)")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8000, help="HAProxy's port on 127.0.0.1")
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--events-db", default="data/events.sqlite", help="the SQLite event store every replica "
                       "shares (one machine)")
    store.add_argument("--events-url", help="postgresql://user@host:port/db: the event store every replica shares")
    parser.add_argument("--logs", default=None, help="directory for the replicas' and HAProxy's logs (default: a "
                        "temporary one)")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error(f"--replicas must be at least 1, got {args.replicas}")
    if not (Path(args.bundle) / "versions").is_dir():
        parser.error(f"--bundle {args.bundle} is not a bundles root (no versions/): replicas follow a root's "
                     "`current`, e.g. artifacts/ml-100k/bundles/compressed")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="recsys-replicas-"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with running_replicas(Path(args.bundle), args.replicas, args.events_url or Path(args.events_db), logs,
                              args.port) as replicas:
            log.info("serving %s through %s (logs in %s); Ctrl-C stops", args.bundle, replicas.url, logs)
            stopped.wait()
    except (BalancerMissing, HarnessError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
