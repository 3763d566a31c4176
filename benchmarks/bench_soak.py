"""A long run at a steady rate with hot reloads: no failed request, memory flat.

``python -m benchmarks.bench_soak --a BUNDLES/compressed --b BUNDLES/teacher --rps 400`` (BUNDLES: e.g.
``artifacts/ml-100k/bundles``)

One ``python -m serving`` worker on core 0 serving bundle A; Locust on core 1 sends the full mix
(/recommend, /similar, /events) at ``--rps`` for ``--minutes``; every ``--reload-every-s`` a
``POST /admin/reload`` alternates B, A, B, ...; the server's RSS is sampled every 10 s. The bar
(issue 18): zero failed requests, and RSS within 10 % of its level after the second reload for
the rest of the run (compared with the same bundle's level: the two bundles differ in size).
Writes ``soak.{md,json,png}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.bench_reload import BAR, TOKEN
from benchmarks.plots import finish_axes, save_figure
from loadtest.harness import pinned, rss_mb, run_locust, running_server
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 10.0


class Reloader(threading.Thread):
    """Reloads B, A, B, ... every ``interval_s`` and samples the server's RSS, until stopped."""

    def __init__(self, url: str, pid: int, bundles: tuple[Path, Path], interval_s: float):
        super().__init__(name="soak-reloader", daemon=True)
        self.url, self.pid, self.bundles, self.interval_s = url, pid, bundles, interval_s
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float, str]] = []  # (seconds, RSS MB, bundle served)
        self.reloads: list[tuple[float, str, int]] = []  # (seconds, bundle, status)
        self.serving = "A"

    def run(self) -> None:
        started = time.monotonic()
        next_reload = started + self.interval_s
        with httpx.Client(base_url=self.url, timeout=300) as client:
            while not self.stop_event.wait(SAMPLE_EVERY_S):
                now = time.monotonic()
                self.samples.append((now - started, rss_mb(self.pid), self.serving))
                if now >= next_reload:
                    name = "B" if self.serving == "A" else "A"
                    target = self.bundles[0 if name == "A" else 1]
                    response = client.post("/admin/reload", json={"path": str(target)},
                                           headers={"Authorization": f"Bearer {TOKEN}"})
                    self.reloads.append((time.monotonic() - started, name, response.status_code))
                    if response.status_code == 200:
                        self.serving = name
                    log.info("reload -> %s: %d; RSS %.0f MB", name, response.status_code, self.samples[-1][1])
                    next_reload += self.interval_s


def judge(samples: list[tuple[float, float, str]], reloads: list[tuple[float, str, int]]) -> dict:
    """Each bundle's level: its first sample after the 2nd reload; the furthest reading from it."""
    if len(reloads) < 2:
        return {"worst_ratio": None, "within_bar": None}
    after = [s for s in samples if s[0] > reloads[1][0]]
    levels: dict[str, float] = {}
    for _, value, name in after:
        levels.setdefault(name, value)
    ratios = [value / levels[name] for _, value, name in after]
    worst = max(ratios, key=lambda ratio: abs(ratio - 1)) if ratios else None
    return {"levels_mb": levels, "worst_ratio": worst, "within_bar": worst is not None and abs(worst - 1) <= BAR}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="bundle served first")
    parser.add_argument("--b", type=Path, required=True, help="bundle reloaded every other time")
    parser.add_argument("--rps", type=float, required=True, help="offered rate (e.g. half the max throughput)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--reload-every-s", type=float, default=180.0)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("reports/serving"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.rps <= 0 or args.minutes <= 0 or args.reload_every_s <= 0 or args.users < 1:
        parser.error("--rps, --minutes, --reload-every-s and --users must be positive")
    a, b = resolve_bundle(args.a), resolve_bundle(args.b)
    seconds = int(args.minutes * 60)
    with tempfile.TemporaryDirectory() as scratch:
        command = pinned([sys.executable, "-m", "serving", "--bundle", str(a), "--host", "127.0.0.1", "--port", "0",
                          "--events-db", f"{scratch}/events.sqlite"], 0)
        with running_server(command, args.out / "soak_raw" / "server.log",
                            env={"RECSYS_ADMIN_TOKEN": TOKEN}) as (server, url):
            reloader = Reloader(url, server.pid, (a, b), args.reload_every_s)
            reloader.start()
            env = {"RECSYS_LOADTEST_BUNDLE": str(a), "RECSYS_LOADTEST_MIX": "full",
                   "RECSYS_LOADTEST_RATE": f"{args.rps / args.users:.6f}"}
            stats = run_locust(url, args.out / "soak_raw" / "locust", users=args.users, seconds=seconds, env=env,
                               core=1, server_pid=server.pid)
            reloader.stop_event.set()
            reloader.join()
    verdict = judge(reloader.samples, reloader.reloads)
    result = {"bundle_a": str(a), "bundle_b": str(b), "rps_target": args.rps, "seconds": seconds,
              "rps": stats.rps, "requests": stats.requests, "failures": stats.failures, "p50_ms": stats.p50_ms,
              "p99_ms": stats.p99_ms, "max_ms": stats.max_ms, "reloads": reloader.reloads,
              "rss_samples": reloader.samples, **verdict}
    write_report(result, args)
    return 0 if stats.failures == 0 and verdict["within_bar"] else 1


def write_report(result: dict, args: argparse.Namespace) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = [r for r in result["reloads"] if r[2] == 200]
    worst = result["worst_ratio"]
    (out / "soak.md").write_text(
        f"# Soak: {result['seconds'] / 60:.0f} minutes at {result['rps_target']:.0f} req/s with hot reloads\n\n"
        f"`python -m benchmarks.bench_soak --a {args.a} --b {args.b} --rps {args.rps:.0f} --minutes {args.minutes:g} "
        f"--reload-every-s {args.reload_every_s:g}`: one worker on core 0, Locust (full mix) on core 1.\n\n"
        f"| requests | failed | req/s | p50 ms | p99 ms | max ms | reloads (ok) | RSS furthest from its level |\n"
        f"|--:|--:|--:|--:|--:|--:|--:|--:|\n"
        f"| {result['requests']:,} | {result['failures']:,} | {result['rps']:.0f} | {result['p50_ms']:.2f} | "
        f"{result['p99_ms']:.2f} | {result['max_ms']:.1f} | {len(result['reloads'])} ({len(ok)}) | "
        f"{'–' if worst is None else f'{worst:.3f} ×'} |\n\n"
        f"Levels (MB, first sample after the 2nd reload, per bundle served): {result.get('levels_mb')}. "
        f"Bar: zero failed, RSS within {BAR:.0%}: "
        f"{'yes' if result['failures'] == 0 and result['within_bar'] else 'no'}.\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    times = [s[0] / 60 for s in result["rss_samples"]]
    ax.plot(times, [s[1] for s in result["rss_samples"]], label="server RSS")
    for index, (when, _, status) in enumerate(result["reloads"]):
        ax.axvline(when / 60, color="grey" if status == 200 else "red", alpha=0.4, lw=1,
                   label="reload" if index == 0 else None)
    finish_axes(ax, "minutes", "RSS (MB)", f"Soak at {result['rps_target']:.0f} req/s, reload every "
                f"{args.reload_every_s:g} s")
    save_figure(fig, out / "soak.png")


if __name__ == "__main__":
    sys.exit(main())
