"""Retrain twice under load, through a real load balancer: Locust -> HAProxy -> N replicas, events in PostgreSQL.

    python -m benchmarks.bench_replicas --dataset ml-100k --out reports/bench/replicas/ml-100k
    # make bench-replicas: ~35 min on ml-100k, plus ~17 min the first time (the start bundles)

1. The log's newest ``--hold-back`` interactions are held back. The rest is the base log: ``make
   retrain`` (no events, no reload) builds the start bundles from it, once per work directory.
2. A copy of the start bundles, a throw-away PostgreSQL (`ops.postgres`), N replicas following the
   copy's ``current`` with staggered reloads and HAProxy in front (`ops.replicas`).
3. For the whole drill, through HAProxy: the held-back interactions replayed in time order as
   POST /events (original timestamps, one ``event_id`` each), and Locust's reads (/recommend,
   /search, /similar at a fixed rate, every answer checked; loadtest/locustfile.py, ``MIX=reads``).
   Real later interactions, not Locust's random clicks, are what the retrains learn from and what
   their quality gate scores.
4. ``make retrain`` runs ``--retrains`` times on the base log with ``EVENTS_URL`` (the PostgreSQL)
   and ``SERVER_URL`` (HAProxy). Before each, one marker event is posted straight to each replica.
5. Meanwhile HAProxy's view of the replicas is sampled every 100 ms and each replica's
   ``/version`` every 250 ms.

The bars (issue 22): zero failed requests; each retrain publishes and every replica then serves
the new version (and how long after ``current`` moved); HAProxy never has fewer than N - 1
replicas up; every event answered 202 is in PostgreSQL exactly once and, when posted before a
retrain started, in that retrain's training log. Writes ``summary.{json,md}`` and
``timeline.png`` under ``--out``; exit 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from benchmarks.plots import finish_axes, save_figure
from loadtest.harness import HarnessError, parse_stats_csv, stop
from ops.merge import LogFiles, MergedLog, write_log
from ops.postgres import PostgresUnavailable, running_postgres
from ops.replicas import BalancerMissing, Replicas, running_replicas
from recsys.bundle.load import read_id_maps
from recsys.bundle.publish import current_version, resolve_bundle, set_current
from recsys.data.datasets import load_dataset
from recsys.data.schema import ITEM, TIME, USER

log = logging.getLogger(__name__)

ROOTS = ("teacher", "compressed")
TOKEN = "bench-replicas-token"
STATUS_EVERY_S = 0.1
VERSION_EVERY_S = 0.25
SWITCH_BAR_S = 10.0
SETTLE_S = 20.0  # traffic on the new version before the next step
LOCUST_BOUND_S = 3 * 3600  # Locust's own --run-time: a bound, the drill stops it earlier
RETRAIN_BOUND_S = 3600


@dataclass
class Timeline:
    """What the watcher saw, as (seconds since start, value) rows."""

    start: float = field(default_factory=time.time)
    up: list[tuple[float, int]] = field(default_factory=list)  # replicas HAProxy has up
    versions: list[tuple[float, int, str | None]] = field(default_factory=list)  # (t, replica, version served)
    current: list[tuple[float, str | None]] = field(default_factory=list)  # the root's current, when it moved

    def now(self) -> float:
        return time.time() - self.start


def copy_served(bundles: Path, dest: Path) -> dict[str, str]:
    """Copy each root's current version into ``dest`` (same layout) and point ``current`` at it."""
    versions = {}
    for root in ROOTS:
        version = current_version(bundles / root)
        if version is None:
            raise SystemExit(f"{bundles / root} has no current bundle: build one first (make bundles)")
        shutil.copytree(resolve_bundle(bundles / root), dest / root / "versions" / version, symlinks=True)
        set_current(dest / root, version)
        versions[root] = version
    return versions


def hold_back(dataset: str, data_dir: Path, n: int, out: Path) -> tuple[LogFiles, Path]:
    """Split ``dataset`` by time: all but its newest ``n`` interactions as the base log (with the full
    catalogue and user table), the newest ``n`` as ``replay.parquet``, the shop's traffic to come.

    Replaying real interactions, not Locust's random clicks, is what keeps the retrains' quality
    gate meaningful: each user's newest interactions are what it holds out and scores.
    """
    data = load_dataset(dataset, data_dir)
    order = data.interactions.reset_index(drop=True).sort_values(TIME, kind="stable")  # ties: file order
    keep = np.sort(order.index[:-n].to_numpy())  # the base keeps its file order
    base = MergedLog(data.interactions.iloc[keep].reset_index(drop=True), data.items, data.users,
                     len(keep), 0, 0, 0)
    files = write_log(base, out, data.name)
    replay = out / "replay.parquet"
    data.interactions.iloc[order.index[-n:]][[USER, ITEM, TIME]].to_parquet(replay, index=False)
    log.info("base log %s: %d interactions; %d newer ones to replay through the replicas (%s)",
             files.interactions, len(keep), n, replay)
    return files, replay


def watch(replicas: Replicas, root: Path, timeline: Timeline, stopped: threading.Event) -> None:
    """Sample HAProxy's view, each replica's served version and the root's ``current`` until stopped."""
    next_versions = 0.0
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while not stopped.wait(STATUS_EVERY_S):
            t = timeline.now()
            try:
                timeline.up.append((t, sum(state == "UP" for state in replicas.server_status().values())))
            except OSError:
                timeline.up.append((t, -1))  # HAProxy did not answer: shown, and fails the capacity bar
            current = current_version(root)
            if not timeline.current or timeline.current[-1][1] != current:
                timeline.current.append((t, current))
            if t >= next_versions:
                next_versions = t + VERSION_EVERY_S
                for i, url in enumerate(replicas.replicas):
                    timeline.versions.append((t, i, served_version(http, url)))


def served_version(http: httpx.Client, url: str) -> str | None:
    try:
        return http.get(f"{url}/version").json()["bundle_version"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None  # busy loading, or not answering: the next sample tells


def post_markers(replicas: Replicas, user: str, item: str, tag: str) -> list[dict]:
    """One event with an ``event_id`` straight to each replica (not through HAProxy): where it landed."""
    markers = []
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        for i, url in enumerate(replicas.replicas):
            event = {"user": user, "item": item, "event": "click", "timestamp": int(time.time()) + i,
                     "event_id": f"{tag}-r{i}"}
            answer = http.post(f"{url}/events", json=event)
            markers.append({**event, "replica": i, "status": answer.status_code, "body": answer.json()})
    return markers


class Replay:
    """The held-back interactions posted through HAProxy in time order at ``rate`` events/s, each with
    its original timestamp and an ``event_id``, as a shop's clients would send them."""

    def __init__(self, path: Path, url: str, rate: float, clock):
        self.rows = pd.read_parquet(path)
        self.url, self.period, self.clock = url, 1.0 / rate, clock
        self.answered: list[tuple[float, int]] = []  # (clock, row) of each 202
        self.failed: list[tuple[int, str]] = []  # (row, what went wrong)
        self.stopped = threading.Event()

    def event(self, row: int) -> dict:
        user, item, timestamp = self.rows.iloc[row][[USER, ITEM, TIME]]
        return {"user": str(user), "item": str(item), "event": "interaction", "timestamp": int(timestamp),
                "event_id": f"replay-{row}"}

    def run(self) -> None:
        due = time.monotonic()
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            for row in range(len(self.rows)):
                if self.stopped.wait(max(0.0, due - time.monotonic())):
                    return
                due += self.period
                try:
                    answer = http.post(f"{self.url}/events", json=self.event(row))
                    if answer.status_code == 202:
                        self.answered.append((self.clock(), row))
                    else:
                        self.failed.append((row, f"HTTP {answer.status_code}: {answer.text[:200]}"))
                except httpx.HTTPError as exc:
                    self.failed.append((row, repr(exc)))

    def answered_before(self, t: float) -> list[dict]:
        return [self.event(row) for when, row in list(self.answered) if when < t]


def stored_counts(url: str, event_ids: list[str]) -> dict[str, int]:
    """How many rows PostgreSQL holds under each event id."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT event_id, count(*) FROM events WHERE event_id = ANY(%s) GROUP BY event_id",
                            (event_ids,)).fetchall()
    return {event_id: 0 for event_id in event_ids} | dict(rows)


def count_events(url: str, event_id_prefix: str = "") -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE coalesce(event_id, '') LIKE %s",
                            (event_id_prefix + "%",)).fetchone()[0]


def missing_from_log(log_path: Path, events: list[dict]) -> list[dict]:
    """The events that are not a row (user, item, timestamp) of a retrain's merged training log."""
    rows = pd.read_parquet(log_path, columns=[USER, ITEM, TIME]).astype(str)
    keys = set(zip(rows[USER], rows[ITEM], rows[TIME], strict=True))
    return [e for e in events if (str(e["user"]), str(e["item"]), str(e["timestamp"])) not in keys]


def make_retrain(files: LogFiles, bundles: Path, store: list[str], log_path: Path) -> int:
    """``make retrain`` on ``files`` (the base log) into ``bundles``; ``store`` are its event-store and
    server variables (``EVENTS_URL=... SERVER_URL=...``)."""
    sides = [f"{name}={path}" for name, path in (("ITEMS", files.items), ("USERS", files.users)) if path]
    command = ["make", "--no-print-directory", "retrain", f"DATA={files.interactions}", *sides, f"BUNDLES={bundles}",
               *store]
    log.info("$ %s (output in %s)", " ".join(command), log_path)
    with open(log_path, "w", encoding="utf-8") as sink:
        return subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, timeout=RETRAIN_BOUND_S,
                              env={**os.environ, "RECSYS_ADMIN_TOKEN": TOKEN}).returncode


def start_bundles(files: LogFiles, work: Path, n: int, threshold: float) -> Path:
    """The bundles the drill starts from, trained on the base log alone (built once per work directory
    and hold-back; ~17 min on ml-100k): what the shop served before the replayed interactions happened.
    A first build whose student the gate refuses starts from the teacher (compression publishes it)."""
    root = work / f"start-{n}"
    if current_version(root / "compressed") is None:
        code = make_retrain(files, root, [f"EVENTS_DB={work / 'no-events.sqlite'}",
                                          f"RETRAIN_ARGS=--no-reload --threshold {threshold}"], work / f"start-{n}.log")
        if current_version(root / "compressed") is None:
            raise HarnessError(f"building the start bundles failed (exit {code}): see {work / f'start-{n}.log'}")
    return root


def newest_run_record(copy: Path) -> dict:
    runs = sorted((copy.parent / "retrain" / "runs").glob("*/retrain.json"))
    return json.loads(runs[-1].read_text()) if runs else {}


def gate_line(card: Path) -> str | None:
    """The quality gate's decision in the card the retrain's compression wrote."""
    try:
        gate = json.loads(card.read_text())["gate"]
    except (OSError, ValueError, KeyError):
        return None
    outcome = "passed" if gate.get("passed") else "refused"
    return f"{gate.get('decision')} -> {outcome} (threshold {gate.get('threshold')})"


def wait_all_serving(timeline: Timeline, n: int, version: str, timeout_s: float) -> float | None:
    """Seconds from now until every replica answered ``version`` (None: not within ``timeout_s``)."""
    started = timeline.now()
    while timeline.now() - started < timeout_s:
        latest = {i: v for _, i, v in timeline.versions[-4 * n:]}
        if len(latest) == n and all(v == version for v in latest.values()):
            return timeline.now() - started
        time.sleep(VERSION_EVERY_S)
    return None


def switch_times(timeline: Timeline, n: int, version: str, since: float) -> list[float | None]:
    """Per replica: seconds from ``since`` (``current`` moved) to its first answer from ``version``."""
    first = {}
    for t, i, v in timeline.versions:
        if v == version and t >= since and i not in first:
            first[i] = t - since
    return [first.get(i) for i in range(n)]


def one_retrain(number: int, files: LogFiles, copy: Path, pg_url: str, replicas: Replicas, timeline: Timeline,
                replay: Replay, work: Path, marker: tuple[str, str], threshold: float) -> dict:
    markers = post_markers(replicas, *marker, tag=f"drill-{number}")
    in_store_before = count_events(pg_url)
    before = current_version(copy / "compressed")
    started = timeline.now()
    replayed = replay.answered_before(started)
    code = make_retrain(files, copy, [f"EVENTS_URL={pg_url}", f"SERVER_URL={replicas.url}",
                                      f"RETRAIN_ARGS=--threshold {threshold}"], work / f"retrain-{number}.log")
    ended = timeline.now()
    record = newest_run_record(copy)
    published = current_version(copy / "compressed")
    moved_at = next((t for t, v in timeline.current if v == published and t >= started), None)
    wait = wait_all_serving(timeline, len(replicas.replicas), published, timeout_s=60) if published != before else None
    merge = record.get("merge", {})
    merged_log = Path(merge["log"]) if merge.get("log") else None
    missing = missing_from_log(merged_log, markers) if merged_log else markers
    result = {
        "retrain": number, "exit": code, "started_s": round(started, 1), "seconds": round(ended - started, 1),
        "before": before, "published": published, "outcome": record.get("outcome"), "reload": record.get("reload"),
        "gate": gate_line(copy / "card.json"),
        "events_in_store_at_start": in_store_before, "events_merged": merge.get("n_events"),
        "markers": markers, "markers_stored": stored_counts(pg_url, [m["event_id"] for m in markers]),
        "markers_in_merged_log": {m["event_id"]: m not in missing for m in markers},
        "replayed_before_start": len(replayed),
        "replayed_missing_from_log": len(missing_from_log(merged_log, replayed)) if merged_log else len(replayed),
        "current_moved_s": None if moved_at is None else round(moved_at, 1),
        "switch_s": [None if s is None else round(s, 2)
                     for s in switch_times(timeline, len(replicas.replicas), published, moved_at or started)],
        "all_replicas_serve_it": wait is not None,
    }
    log.info("retrain %d: exit %d after %.0f s; %s -> %s; replicas switched after %s s", number, code,
             ended - started, before, published, result["switch_s"])
    time.sleep(SETTLE_S)
    return result


def locust_command(host: str, prefix: Path, users: int) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(Path("loadtest/locustfile.py").resolve()), "--headless",
            "--host", host, "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{LOCUST_BOUND_S}s",
            "--csv", str(prefix), "--only-summary", "--stop-timeout", "5"]


def run_drill(args: argparse.Namespace, work: Path) -> dict:
    files, replay_path = hold_back(args.dataset, args.data_dir, args.hold_back, work / "base")
    start = start_bundles(files, work, args.hold_back, args.gate_threshold)
    copy = work / "bundles"
    for stale in (copy, work / "retrain"):  # a previous drill's publishes and runs
        shutil.rmtree(stale, ignore_errors=True)
    started_versions = copy_served(start, copy)
    start_bundle = resolve_bundle(copy / "compressed")
    users, items = read_id_maps(start_bundle)
    timeline, stopped = Timeline(), threading.Event()
    with ExitStack() as stack:
        pg_url = stack.enter_context(running_postgres()).url()
        replicas = stack.enter_context(running_replicas(copy / "compressed", args.replicas, pg_url, work / "logs",
                                                        env={"RECSYS_ADMIN_TOKEN": TOKEN}))
        background(stack, stopped, "watch", watch, replicas, copy / "compressed", timeline, stopped)
        replay = Replay(replay_path, replicas.url, args.replay_rate, timeline.now)
        background(stack, replay.stopped, "replay", replay.run)
        prefix = work / "locust"
        env = {**os.environ, "RECSYS_LOADTEST_BUNDLE": str(start_bundle), "RECSYS_LOADTEST_MIX": "reads",
               "RECSYS_LOADTEST_RATE": str(args.rate)}
        with open(work / "locust.log", "w", encoding="utf-8") as sink:
            locust = subprocess.Popen(locust_command(replicas.url, prefix, args.users), env=env, stdout=sink,
                                      stderr=subprocess.STDOUT)
        stack.callback(stop, locust)
        time.sleep(args.warmup)
        retrains = [one_retrain(n, files, copy, pg_url, replicas, timeline, replay, work,
                                (str(users.ids[0]), str(items.ids[0])), args.gate_threshold)
                    for n in range(1, args.retrains + 1)]
        stop(locust, timeout_s=60)
        replay.stopped.set()
        time.sleep(1.0)  # the post in flight, if any
        replay_result = {"posted": len(replay.answered) + len(replay.failed), "answered_202": len(replay.answered),
                         "failed": replay.failed[:20], "n_failed": len(replay.failed),
                         "stored": count_events(pg_url, "replay-"), "rate_per_s": args.replay_rate,
                         "held_back": args.hold_back}
        stats = locust_stats(prefix)
    return {"dataset": args.dataset, "replicas": args.replicas, "users": args.users, "rate_per_user": args.rate,
            "gate_threshold": args.gate_threshold, "started_from": started_versions,
            "start_gate": gate_line(start / "card.json"),
            "base_log": str(files.interactions), "retrains": retrains,
            "replay": replay_result, "locust_exit": locust.returncode, "locust": stats,
            "capacity": capacity(timeline, args.replicas), "timeline": timeline_json(timeline)}


def background(stack: ExitStack, stopped: threading.Event, name: str, target, *args) -> None:
    """``target(*args)`` in a thread, stopped (``stopped`` set) and joined when ``stack`` closes."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(stopped.set)


def locust_stats(prefix: Path) -> dict:
    stats_csv = prefix.with_name(prefix.name + "_stats.csv")
    if not stats_csv.exists():
        raise HarnessError(f"Locust wrote no {stats_csv}; see {prefix.parent / 'locust.log'}")
    names = [name for name in pd.read_csv(stats_csv)["Name"] if isinstance(name, str)]
    history = prefix.with_name(prefix.name + "_stats_history.csv")
    return {"by_name": {name: parse_stats_csv(stats_csv, name) for name in names},
            "history": history_json(history) if history.exists() else []}


def history_json(path: Path) -> list[tuple[float, float, float]]:
    """Locust's per-second (unix time, requests/s, failures/s), all requests together."""
    frame = pd.read_csv(path)
    frame = frame[frame["Name"] == "Aggregated"]
    return [(float(t), float(r), float(f)) for t, r, f in
            zip(frame["Timestamp"], frame["Requests/s"], frame["Failures/s"], strict=True)]


def capacity(timeline: Timeline, n: int) -> dict:
    counts = pd.Series([up for _, up in timeline.up]).value_counts().sort_index()
    return {"samples": len(timeline.up), "min_up": int(counts.index.min()) if len(counts) else None,
            "samples_by_up": {int(k): int(v) for k, v in counts.items()}, "bar_min_up": n - 1}


def timeline_json(timeline: Timeline) -> dict:
    """The samples where something changed (and the last ones): what the chart draws, in kilobytes."""
    return {"start_unix": timeline.start,
            "up": changes(timeline.up, series=lambda row: 0, value=lambda row: row[1]),
            "versions": changes(timeline.versions, series=lambda row: row[1], value=lambda row: row[2]),
            "current": timeline.current}


def changes(rows: list[tuple], series, value) -> list[tuple]:
    """Rows whose ``value`` differs from the previous row of the same ``series``, and each series' last
    row (so a step chart runs to the end), in time order."""
    kept, last = [], {}
    for row in rows:
        previous = last.get(series(row))
        if previous is None or value(previous) != value(row):
            kept.append(row)
        last[series(row)] = row
    return sorted({*kept, *last.values()})


def bars(result: dict) -> list[dict]:
    """Each bar with what was measured and whether it passed."""
    total = result["locust"]["by_name"].get("Aggregated", {})
    retrains, replay = result["retrains"], result["replay"]
    switch = [s for r in retrains for s in r["switch_s"]]
    markers = [m for r in retrains for m in r["markers"]]
    markers_stored = [count for r in retrains for count in r["markers_stored"].values()]
    markers_merged = [found for r in retrains for found in r["markers_in_merged_log"].values()]
    marker_failures = sum(m["status"] != 202 for m in markers)
    return [
        {"bar": "zero failed requests (Locust's reads, every answer checked; the replayed and marker events)",
         "measured": f"Locust {total.get('failures')} failed of {total.get('requests')}; events "
                     f"{replay['n_failed'] + marker_failures} failed of {replay['posted'] + len(markers)}",
         "passed": total.get("failures") == 0 and total.get("requests", 0) > 0 and replay["n_failed"] == 0
         and marker_failures == 0},
        {"bar": f"make retrain published a new version, {len(retrains)} of {len(retrains)} runs", "measured": ", ".join(
            f"exit {r['exit']}: {r['before']} -> {r['published']}" for r in retrains),
         "passed": all(r["exit"] == 0 and r["published"] != r["before"] for r in retrains)},
        {"bar": f"every replica serves the new version within {SWITCH_BAR_S:.0f} s",
         "measured": "switched after " + ", ".join("-" if s is None else f"{s:.1f} s" for s in switch),
         "passed": all(r["all_replicas_serve_it"] for r in retrains)
         and all(s is not None and s <= SWITCH_BAR_S for s in switch)},
        {"bar": f"HAProxy never has fewer than N - 1 = {result['capacity']['bar_min_up']} replicas up",
         "measured": f"min {result['capacity']['min_up']} up over {result['capacity']['samples']} samples "
                     f"{result['capacity']['samples_by_up']}",
         "passed": result["capacity"]["min_up"] is not None
         and result["capacity"]["min_up"] >= result["capacity"]["bar_min_up"]},
        {"bar": "events posted through HAProxy and to each replica are in PostgreSQL exactly once",
         "measured": f"replayed: {replay['stored']} stored of {replay['answered_202']} answered 202; markers: "
                     f"{markers_stored.count(1)} of {len(markers_stored)} stored once",
         "passed": replay["answered_202"] > 0 and replay["stored"] == replay["answered_202"]
         and bool(markers_stored) and all(count == 1 for count in markers_stored)},
        {"bar": "... and in the next retrain's training log",
         "measured": "; ".join(f"retrain {r['retrain']}: {r['replayed_before_start'] - r['replayed_missing_from_log']}"
                               f" of {r['replayed_before_start']} replayed, "
                               f"{sum(r['markers_in_merged_log'].values())} of {len(r['markers'])} markers "
                               f"({r['events_merged']} events merged)" for r in retrains),
         "passed": bool(markers_merged) and all(markers_merged)
         and all(r["replayed_before_start"] > 0 and r["replayed_missing_from_log"] == 0 for r in retrains)
         and all((r["events_merged"] or 0) >= r["events_in_store_at_start"] for r in retrains)},
    ]


def write_reports(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(result))
    plot(result, out / "timeline.png")


def markdown(result: dict) -> str:
    times = {1: "once", 2: "twice"}.get(len(result["retrains"]), f"{len(result['retrains'])} times")
    lines = [f"# {result['replicas']} replicas behind HAProxy while `make retrain` publishes {times} "
             f"({result['dataset']}, events in PostgreSQL)", "",
             f"The start bundles were trained on {result['dataset']} without its newest "
             f"{result['replay']['held_back']:,} interactions; those are replayed through HAProxy as POST /events "
             f"(original timestamps, one `event_id` each) at {result['replay']['rate_per_s']:g}/s, so each "
             "retrain learns from the real later log. Locust: "
             f"{result['users']} users at {result['rate_per_user']:g} req/s each, the shop's reads (/recommend, "
             "/search, /similar), through HAProxy for the whole run. Before each retrain one marker event goes "
             "straight to each replica. Command: `python -m benchmarks.bench_replicas` (`make bench-replicas`).",
             "",
             "| bar | measured | passed |", "|---|---|---|"]
    lines += [f"| {b['bar']} | {b['measured']} | {'yes' if b['passed'] else '**no**'} |" for b in result["bars"]]
    lines += ["", "| retrain | seconds | published | events merged | replicas switched after (s) | quality gate |",
              "|--:|--:|---|--:|---|---|"]
    lines += [f"| {r['retrain']} | {r['seconds']:.0f} | {r['published']} | {r['events_merged']} | "
              f"{', '.join('-' if s is None else f'{s:.1f}' for s in r['switch_s'])} | {r.get('gate')} |"
              for r in result["retrains"]]
    lines += ["", f"The retrains run with `--threshold {result['gate_threshold']:g}`, not the default 0.97: this "
              "drill measures serving while bundles are published, and on this base log the default gate refuses "
              "the compressed student (ratio and interval in the start build's card), which would leave nothing "
              "to publish. A refused retrain leaves `current` and the replicas untouched.", "",
              f"Start build (the base log alone): {result.get('start_gate')}"
              + (" The drill started from its teacher: compression publishes the teacher when a first build's "
                 "student is refused." if "refused" in str(result.get("start_gate")) else "")]
    lines += ["", "| request | count | failed | p50 ms | p99 ms |", "|---|--:|--:|--:|--:|"]
    lines += [f"| {name} | {s['requests']} | {s['failures']} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} |"
              for name, s in result["locust"]["by_name"].items()]
    return "\n".join(lines) + "\n\n![timeline](timeline.png)\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = result["timeline"]["start_unix"]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    history = result["locust"]["history"]
    top.plot([t - start for t, _, _ in history], [r for _, r, _ in history], label="requests/s")
    top.plot([t - start for t, _, _ in history], [f for _, _, f in history], label="failures/s", color="red")
    up = result["timeline"]["up"]
    middle.step([t for t, _ in up], [u for _, u in up], where="post", label="replicas up in HAProxy")
    middle.set_ylim(-0.2, result["replicas"] + 0.5)
    order = {v: k for k, v in enumerate(dict.fromkeys(v for _, _, v in result["timeline"]["versions"] if v))}
    for replica in range(result["replicas"]):
        points = [(t, order[v]) for t, i, v in result["timeline"]["versions"] if i == replica and v]
        bottom.step([t for t, _ in points], [k + 0.05 * replica for _, k in points], where="post",
                    label=f"replica r{replica}")
    bottom.set_yticks(range(len(order)), [v[-8:] for v in order])
    for axis in (top, middle, bottom):
        for r in result["retrains"]:
            axis.axvspan(r["started_s"], r["started_s"] + r["seconds"], color="0.9", zorder=0)
    finish_axes(top, "", "req/s", "Locust through HAProxy (grey: make retrain running)")
    finish_axes(middle, "", "up", "HAProxy's health checks (GET /readyz)")
    finish_axes(bottom, "seconds since start", "version served", "each replica's /version")
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k", help="the log: all but its newest --hold-back "
                        "interactions train the start bundles and are make retrain's base log")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--hold-back", type=int, default=3000, help="newest interactions replayed as events")
    parser.add_argument("--replay-rate", type=float, default=1.5, help="replayed events per second")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--retrains", type=int, default=2)
    parser.add_argument("--users", type=int, default=10, help="Locust users")
    parser.add_argument("--rate", type=float, default=3.0, help="requests/s per Locust user")
    parser.add_argument("--warmup", type=float, default=240.0, help="seconds of traffic and replay before the "
                        "first retrain")
    parser.add_argument("--gate-threshold", type=float, default=0.9,
                        help="the retrains' quality gate (make retrain --threshold); see the report for why")
    parser.add_argument("--work", type=Path, default=Path("artifacts/bench-replicas"),
                        help="work directory: the start bundles are built there once and reused")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/replicas/ml-100k"))
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error(f"--replicas must be at least 2 (capacity N - 1 must stay above 0), got {args.replicas}")
    if min(args.retrains, args.users, args.hold_back) < 1 or min(args.rate, args.replay_rate) <= 0:
        parser.error("--retrains, --users and --hold-back must be at least 1, --rate and --replay-rate positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per /version sample otherwise
    args = parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run_drill(args, work)
    except (PostgresUnavailable, BalancerMissing, HarnessError) as exc:
        log.error("%s", exc)
        return 1
    result["bars"] = bars(result)
    result["work"] = str(work)
    write_reports(result, args.out)
    for bar in result["bars"]:
        log.info("%s %s: %s", "PASS" if bar["passed"] else "FAIL", bar["bar"], bar["measured"])
    log.info("wrote %s (logs in %s)", args.out / "summary.md", work)
    return 0 if all(bar["passed"] for bar in result["bars"]) else 1


if __name__ == "__main__":
    sys.exit(main())
