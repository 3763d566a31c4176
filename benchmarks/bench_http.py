"""Sequential HTTP latency of every endpoint of a real ``python -m serving`` on 127.0.0.1.

    python -m benchmarks.bench_http --make-bundle /tmp/bench_bundles        # once: fixture-like bundle
    python -m benchmarks.bench_http --bundle /tmp/bench_bundles --requests 500 --out reports/bench/http

Starts one server process (one worker, port chosen by the OS, events in a temporary SQLite file),
warms each endpoint up, then sends ``--requests`` requests per endpoint one after another over a
keep-alive ``httpx`` connection and reports p50/p99/mean milliseconds as seen by the client. The
server's own CPU competes with this client on the same machine, so the numbers are an upper bound
for one idle core. ``--make-bundle`` builds the test fixture's bundle (checkerboard data, tiny
towers) with 200 users and 80 items, so /recommend?k=20 returns 20 items.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import cycle
from pathlib import Path

import httpx

from loadtest.harness import running_server
from recsys.bundle.content import load_content
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger("benchmarks.bench_http")

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120
WARMUP = 50
_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def make_bundle(root: Path) -> str:
    """The serving tests' fixture bundle, scaled so k=20 is a real top-20."""
    from recsys.split import temporal_split
    from tests.fixtures.bundles import publish_tiny_bundle
    from tests.fixtures.data import checkerboard_dataset

    dataset = checkerboard_dataset(n_users=200, items_per_group=40)
    return publish_tiny_bundle(root, dataset, temporal_split(dataset), seed=0, make_current=True)


@contextmanager
def server(bundle: Path, events_db: Path) -> Iterator[str]:
    command = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--events-db", str(events_db),
               "--host", "127.0.0.1", "--port", "0", "--log-level", "info"]  # INFO: the "running on" line
    with running_server(command, events_db.with_name("server.log"), timeout_s=START_TIMEOUT_S) as (_, url):
        yield url


def endpoints(users: list[str], items: list[str], k: int) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    known, item_ids, n = cycle(users), cycle(items), cycle(range(10**9))
    return {
        f"GET /recommend k={k}": lambda c: c.get("/recommend", params={"user": next(known), "k": k}),
        f"GET /recommend k={k} unknown user": lambda c: c.get("/recommend", params={"user": f"new{next(n)}", "k": k}),
        f"GET /recommend k={k} exclude=3": lambda c: c.get(
            "/recommend", params={"user": next(known), "k": k, "exclude": ",".join(items[:3])}),
        "GET /similar k=10": lambda c: c.get("/similar", params={"item": next(item_ids), "k": 10}),
        "POST /events (1 event, fsync)": lambda c: c.post("/events", json={"user": next(known), "item": items[0]}),
        "GET /healthz": lambda c: c.get("/healthz"),
        "GET /readyz": lambda c: c.get("/readyz"),
        "GET /version": lambda c: c.get("/version"),
        "GET /metrics": lambda c: c.get("/metrics"),
    }


def measure(client: httpx.Client, call: Callable, n_requests: int, deadline: float) -> list[float]:
    for _ in range(WARMUP):
        call(client).raise_for_status()
    samples = []
    for _ in range(n_requests):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter_ns()
        response = call(client)
        samples.append((time.perf_counter_ns() - started) / 1e6)
        response.raise_for_status()
    return samples


def summarise(samples: list[float]) -> dict[str, float]:
    return {"n": len(samples), "p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(statistics.quantiles(samples, n=100)[98], 3),
            "mean_ms": round(statistics.fmean(samples), 3)}


def run(bundle: Path, n_requests: int, k: int, max_seconds: float) -> dict[str, dict[str, float]]:
    content = load_content(resolve_bundle(bundle))
    users = [str(u) for u in content.users.ids[:100]]
    items = [str(i) for i in content.items.ids[:100]]
    results = {}
    with tempfile.TemporaryDirectory() as scratch, server(bundle, Path(scratch) / "events.sqlite") as url:
        log.info("server at %s", url)
        deadline = time.monotonic() + max_seconds
        with httpx.Client(base_url=url, timeout=10) as client:
            for name, call in endpoints(users, items, k).items():
                results[name] = summarise(measure(client, call, n_requests, deadline))
                log.info("%-36s p50 %7.3f ms  p99 %7.3f ms  (n=%d)", name, results[name]["p50_ms"],
                         results[name]["p99_ms"], results[name]["n"])
    return results


def write_report(out: Path, results: dict, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"requests_per_endpoint": args.requests, "k": args.k, "python": platform.python_version(),
            "machine": platform.machine(), "note": "sequential, one keep-alive connection, client on the same host"}
    (out / "http_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["| endpoint | n | p50 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {r['n']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['mean_ms']:.3f} |"
              for name, r in results.items()]
    (out / "http_bench.md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s and %s", out / "http_bench.json", out / "http_bench.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundles root or bundle directory to serve")
    parser.add_argument("--make-bundle", type=Path, metavar="ROOT", help="build the fixture-like bundle and exit")
    parser.add_argument("--requests", type=int, default=500, help="timed requests per endpoint")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=300, help="stop measuring after this long")
    parser.add_argument("--out", type=Path, help="write http_bench.json/.md here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would time the logging too
    if args.make_bundle:
        log.info("published %s under %s", make_bundle(args.make_bundle), args.make_bundle)
        return 0
    if not args.bundle:
        parser.error("pass --bundle PATH (or --make-bundle ROOT first)")
    results = run(args.bundle, args.requests, args.k, args.max_seconds)
    if args.out:
        write_report(args.out, results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
