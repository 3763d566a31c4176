"""How fast an event reaches every worker's answers, under load; what the real-time history costs.

    python -m benchmarks.bench_freshness --bundle artifacts/ml-100k/bundles/compressed --events 1000

Starts ``python -m serving --workers 2`` on the bundle and Locust's full load-test mix against it
(``--locust-users`` users at ``--rate`` requests/s each, POST /events included). Meanwhile, for
each of ``--events`` probes: a known user's current top item is clicked (POST /events), and from
the 202 on the user's top 10 is asked for again and again for ``--window`` seconds, each time on
a new connection (so either worker answers). The probe's staleness is the time from the 202 to the
*last* answer that still held the clicked item (0 when none did): after it, every answer is fresh.
Also the overlay's memory per 10,000 users (tracemalloc). Writes
reports/serving/freshness.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from loadtest.harness import run_locust, running_server
from recsys.bundle.load import load_serving_model
from serving.overlay import HistoryOverlay
from serving.settings import Settings

log = logging.getLogger("benchmarks.bench_freshness")

OUT = Path("reports/serving")


def overlay_bytes(users: int = 10_000, events_per_user: int = 10) -> int:
    """Bytes the overlay holds for ``users`` users with ``events_per_user`` events each."""
    n = users * events_per_user
    frame = pd.DataFrame({"user_id": [f"user-{i % users}" for i in range(n)],
                          "item_id": [f"item-{i % 5000}" for i in range(n)],
                          "timestamp": np.arange(n) + 1_800_000_000},
                         index=pd.Index(np.arange(1, n + 1), name="id"))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    overlay = HistoryOverlay(cutoff=0, max_users=users, max_events=50)
    overlay.add(frame)
    del frame
    used = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert overlay.n_events == n
    return int(used)


def top(http: httpx.Client, user: str) -> list[str]:
    return [item["item_id"] for item in http.get("/recommend", params={"user": user, "k": 10}).json()["items"]]


def probe(url: str, user: str, window_s: float) -> tuple[float, int]:
    """Click the user's top item; (seconds from the 202 to the last stale answer, answers checked)."""
    with httpx.Client(base_url=url, timeout=10) as http:
        clicked = top(http, user)[0]
        if http.post("/events", json={"user": user, "item": clicked, "event": "click"}).status_code != 202:
            raise RuntimeError("POST /events was not accepted")
    accepted = time.perf_counter()
    stale, checked = 0.0, 0
    while time.perf_counter() - accepted < window_s:
        with httpx.Client(base_url=url, timeout=10, headers={"Connection": "close"}) as http:
            asked = time.perf_counter()
            if clicked in top(http, user):
                stale = asked - accepted
        checked += 1
    return stale, checked


def run(args: argparse.Namespace) -> dict:
    bundle = Path(args.bundle)
    users = load_serving_model(bundle, precompute_users=False).content.users.ids
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(np.asarray(users), size=args.events)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "serving", "--bundle", str(bundle), "--events-db", f"{tmp}/events.sqlite",
                   "--host", "127.0.0.1", "--port", str(args.port), "--workers", str(args.workers)]
        with running_server(command, Path(tmp) / "server.log") as (_, url):
            env = {"RECSYS_LOADTEST_BUNDLE": str(bundle), "RECSYS_LOADTEST_MIX": "full",
                   "RECSYS_LOADTEST_CHECKS": "shape", "RECSYS_LOADTEST_RATE": str(args.rate),
                   "RECSYS_LOADTEST_SEED": str(args.seed)}
            # Locust runs about as long as the probes take (bounded), and is waited for.
            seconds = int(args.events * (args.window + 0.1)) + 30
            load = threading.Thread(target=run_locust, args=(url, Path(tmp) / "locust"),
                                    kwargs={"users": args.locust_users, "seconds": seconds, "env": env})
            load.start()
            time.sleep(3)  # Locust's users are spawned
            stale, checked = [], 0
            for n, user in enumerate(chosen):
                seconds, answers = probe(url, str(user), args.window)
                stale.append(seconds)
                checked += answers
                if (n + 1) % 100 == 0:
                    log.info("%d probes: p99 staleness %.1f ms", n + 1, 1e3 * float(np.percentile(stale, 99)))
            under_load = load.is_alive()
            load.join()
    stale_ms = np.asarray(stale) * 1e3
    return {"bundle": str(bundle), "workers": args.workers, "events": args.events, "answers_checked": checked,
            "window_s": args.window, "poll_s": Settings.model_fields["overlay_poll_s"].default,
            "load": {"locust_users": args.locust_users, "rate_per_user": args.rate, "mix": "full",
                     "still_running_at_end": under_load},
            "staleness_ms": {"p50": float(np.percentile(stale_ms, 50)), "p99": float(np.percentile(stale_ms, 99)),
                             "max": float(stale_ms.max()), "stale_share": float((stale_ms > 0).mean())},
            "overlay_bytes_per_10k_users_10_events": overlay_bytes()}


def markdown(result: dict) -> str:
    stale = result["staleness_ms"]
    return "\n".join([
        "# Real-time history: freshness and memory", "",
        f"`python -m benchmarks.bench_freshness` on `{result['bundle']}`, {result['workers']} workers, under "
        f"Locust's full mix ({result['load']['locust_users']} users x {result['load']['rate_per_user']} req/s; "
        f"still running at the end: {result['load']['still_running_at_end']}). Each of {result['events']:,} "
        f"probes clicks a user's top item, then asks for their top 10 on new connections for "
        f"{result['window_s']} s ({result['answers_checked']:,} answers checked in all). Staleness: from the 202 "
        f"to the last answer still holding the clicked item. Stated bound: the overlay poll interval, "
        f"{result['poll_s'] * 1e3:.0f} ms.", "",
        "| staleness p50 (ms) | p99 (ms) | max (ms) | probes with any stale answer |", "|---|---|---|---|",
        f"| {stale['p50']:.1f} | {stale['p99']:.1f} | {stale['max']:.1f} | {stale['stale_share']:.1%} |", "",
        f"Overlay memory: {result['overlay_bytes_per_10k_users_10_events'] / 1e6:.1f} MB per 10,000 users with 10 "
        "events each (tracemalloc).", ""])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe request otherwise
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="artifacts/ml-100k/bundles/compressed")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--window", type=float, default=0.3, help="seconds of answers checked after each 202")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument("--locust-users", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10.0, help="requests/s per Locust user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "freshness.json").write_text(json.dumps(result, indent=2))
    (out / "freshness.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
