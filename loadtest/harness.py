"""Processes for a load test: a server on 127.0.0.1, a headless Locust run, CPU/RSS sampling, stats parsing.

Every process is bounded in time and always terminated (context managers), and the server and
Locust can be pinned to different cores with ``taskset`` so they do not steal each other's CPU.
"""

from __future__ import annotations

import csv
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from loadtest.latency import AGGREGATED, read_latencies, read_samples_by_name, samples_by_name_path, samples_path

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SERVER_START_TIMEOUT_S = 120
LOCUST_GRACE_S = 60  # on top of --run-time: startup, stop and writing the CSVs
RAMP_S = 2.0  # left out of CPU figures: spawning users (stats are reset once all are running)
_LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


class HarnessError(RuntimeError):
    """A server or Locust run could not be started or produced no stats."""


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a server that must be told its port: HAProxy, PostgreSQL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    """``taskset -c CORE command`` when taskset exists and the core is ours; else the command as is."""
    if core is None:
        return list(command)
    if shutil.which("taskset") is None:
        log.warning("taskset not found: running unpinned, so server and Locust share cores (install util-linux)")
        return list(command)
    if core not in os.sched_getaffinity(0):
        log.warning("core %d is not available to this process: running unpinned", core)
        return list(command)
    return ["taskset", "-c", str(core), *command]


@contextmanager
def running_server(command: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                   timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start a uvicorn server (which must bind 127.0.0.1, port 0 is fine); yield it and its base URL.

    Its output goes to ``log_path``; the URL comes from uvicorn's "running on" line, so no port is
    guessed. The server is terminated (SIGTERM, then SIGKILL) however the block ends.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(list(command), env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # keep reading so the server never blocks on a full pipe
        with open(log_path, "w", encoding="utf-8") as sink:
            for line in process.stdout:
                sink.write(line)
                sink.flush()
                lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name="server-log", daemon=True).start()
    try:
        yield process, _wait_listening(process, lines, timeout_s, log_path)
    finally:
        stop(process)


def _wait_listening(process: subprocess.Popen, lines: queue.Queue, timeout_s: float, log_path: Path) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise HarnessError(f"server did not start within {timeout_s:.0f} s (log: {log_path})") from None
        if line is None:
            process.wait()
            raise HarnessError(f"server exited with status {process.returncode} before listening (log: {log_path})")
        if match := _LISTENING.search(line):
            return match.group(1)


def stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mb(pid: int) -> float:
    """A process's resident set size now, in MB."""
    return psutil.Process(pid).memory_info().rss / 2**20


class ProcessSampler:
    """Samples a process's CPU time and RSS in a background thread until stopped or the process ends."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._samples: list[tuple[float, float, int]] = []  # (unix time, cpu seconds, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                with self._process.oneshot():
                    times = self._process.cpu_times()
                    self._samples.append((time.time(), times.user + times.system, self._process.memory_info().rss))
            except psutil.Error:  # the process ended
                return
            if self._stop.wait(self._interval_s):
                return

    def usage(self, start: float | None = None, end: float | None = None) -> tuple[float | None, float | None]:
        """(CPU % of one core, peak RSS MB) between unix times ``start`` and ``end`` (default: all samples)."""
        window = [sample for sample in self._samples
                  if (start is None or sample[0] >= start) and (end is None or sample[0] <= end)]
        if len(window) < 2:
            window = self._samples
        if not window:
            return None, None
        rss_mb = max(sample[2] for sample in window) / 2**20
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return None, rss_mb
        return 100.0 * (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), rss_mb


@dataclass
class LocustStats:
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    failures: int
    exit_code: int
    locust_cpu: float | None = None
    server_cpu: float | None = None
    server_rss_mb: float | None = None
    latency_source: str = "locust-csv"
    samples: np.ndarray | None = None  # every response time (ms), when the locustfile recorded them
    samples_by_name: dict[str, np.ndarray] | None = None  # the same, per request name ("/search")


def parse_stats_csv(path: Path, name: str = AGGREGATED) -> dict[str, float]:
    """The ``name`` row of Locust's ``PREFIX_stats.csv`` (default: the all-requests total)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == name]
    if not rows:
        raise HarnessError(f"{path} has no {name!r} row: did Locust make any request?")
    row = rows[-1]

    def number(column: str) -> float:
        value = row.get(column, "N/A")
        return float("nan") if value in ("", "N/A", None) else float(value)

    return {"rps": number("Requests/s"), "p50_ms": number("50%"), "p95_ms": number("95%"), "p99_ms": number("99%"),
            "max_ms": number("Max Response Time"), "requests": int(number("Request Count")),
            "failures": int(number("Failure Count"))}


def measured_window(history_csv: Path, skip_s: float) -> tuple[float | None, float | None]:
    """Unix times of the test's first and last stats rows (Locust's ``_stats_history.csv``), minus the ramp."""
    if not history_csv.exists():
        return None, None
    with open(history_csv, newline="", encoding="utf-8") as handle:
        stamps = [float(row["Timestamp"]) for row in csv.DictReader(handle) if row.get("Timestamp")]
    if len(stamps) < 2:
        return None, None
    return min(stamps[0] + skip_s, stamps[-1]), stamps[-1]


def run_locust(host: str, prefix: Path, *, users: int, seconds: int, env: dict[str, str],
               core: int | None = None, server_pid: int | None = None, reset_stats: bool = True) -> LocustStats:
    """One headless Locust run against ``host``: stats from its CSV (exact percentiles when recorded),
    Locust's own CPU and, given ``server_pid``, the server's CPU and peak RSS over the same window."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    latencies = prefix.with_name(prefix.name + "_latencies.json")
    for stale in prefix.parent.glob(prefix.name + "_*"):
        stale.unlink()
    command = pinned([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
                      "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
                      "--csv", str(prefix), "--only-summary", "--stop-timeout", "2",
                      *(["--reset-stats"] if reset_stats else [])], core)
    locust_env = {**os.environ, **env, "RECSYS_LOADTEST_LATENCIES": str(latencies)}
    with ExitStack() as stack:
        out = stack.enter_context(open(prefix.with_name(prefix.name + ".log"), "w", encoding="utf-8"))
        server = stack.enter_context(ProcessSampler(server_pid)) if server_pid else None
        process = subprocess.Popen(command, env=locust_env, stdout=out, stderr=subprocess.STDOUT)
        stack.callback(stop, process)
        with ProcessSampler(process.pid) as locust:
            try:
                exit_code = process.wait(timeout=seconds + LOCUST_GRACE_S)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"Locust did not finish within {seconds + LOCUST_GRACE_S} s") from None
    stats_csv = prefix.with_name(prefix.name + "_stats.csv")
    if not stats_csv.exists():
        raise HarnessError(f"Locust wrote no {stats_csv} (exit {exit_code}); see {prefix}.log")
    stats = LocustStats(**parse_stats_csv(stats_csv), exit_code=exit_code)
    start, end = measured_window(prefix.with_name(prefix.name + "_stats_history.csv"), skip_s=RAMP_S)
    stats.locust_cpu, _ = locust.usage(start, end)
    if server is not None:
        stats.server_cpu, stats.server_rss_mb = server.usage(start, end)
    if latencies.exists():
        exact = read_latencies(latencies).get(AGGREGATED)
        if exact:
            stats.p50_ms, stats.p95_ms, stats.p99_ms = exact["p50_ms"], exact["p95_ms"], exact["p99_ms"]
            stats.max_ms, stats.latency_source = exact["max_ms"], "locust-request-events"
        if samples_path(latencies).exists():
            stats.samples = np.load(samples_path(latencies))
        if samples_by_name_path(latencies).exists():
            stats.samples_by_name = read_samples_by_name(latencies)
    return stats
