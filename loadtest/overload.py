"""``python -m loadtest.overload``: offer far more than a server can answer, then normal load again.

    python -m loadtest.overload --bundle artifacts/ml-100k/bundles/compressed --dataset ml-100k

One ``python -m serving`` worker on core 0 (default batcher settings: ``RECSYS_MAX_BATCH``,
``RECSYS_MAX_QUEUE``, ``RECSYS_QUEUE_DEADLINE_S``), Locust on core 1. Three phases:

1. ``calibrate``: closed loop, ``--users`` users, to find the server's maximum req/s;
2. ``overload``: ``--processes`` Locust processes of ``--overload-users`` closed-loop users each for
   ``--overload-seconds``: the offered load is far above the maximum, so the batcher sheds with
   503 + Retry-After; shed and accepted responses are timed apart (the locustfile names shed
   ones ``[503]``);
3. ``recovery``: a fixed rate of ``--recovery-fraction`` of the maximum, which must see no failure.

The server's RSS is sampled before, during and after. Writes ``overload.{json,md}`` under
``--out`` (Locust files in ``raw/``). Exit 0 when the recovery phase saw no failure, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtest.harness import HarnessError, LocustStats, pinned, rss_mb, run_locust, running_server
from loadtest.latency import AGGREGATED, SHED_SUFFIX, read_latencies
from loadtest.server_metrics import buckets, counts_by, quantile_bound, scrape
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverloadConfig:
    bundle: Path
    dataset: str
    out: Path
    users: int = 64
    calibrate_seconds: int = 20
    overload_users: int = 400
    processes: int = 2
    overload_seconds: int = 60
    recovery_seconds: int = 30
    recovery_fraction: float = 0.5
    server_core: int | None = 0
    locust_core: int | None = 1


def split_latencies(prefix: Path) -> dict[str, dict]:
    """Accepted vs shed percentiles from a run's latency file (``{}`` for a missing side)."""
    path = prefix.with_name(prefix.name + "_latencies.json")
    if not path.exists():
        return {}
    named = {name: value for name, value in read_latencies(path).items() if name != AGGREGATED}
    sides: dict[str, dict] = {}
    for side, names in (("shed", [n for n in named if n.endswith(SHED_SUFFIX)]),
                        ("accepted", [n for n in named if not n.endswith(SHED_SUFFIX)])):
        if names:  # the largest request name stands for the side (the mix here is /recommend only)
            main = max(names, key=lambda name: named[name]["count"])
            sides[side] = {**named[main], "count": sum(named[name]["count"] for name in names)}
    return sides


class Overload:
    def __init__(self, cfg: OverloadConfig):
        self.cfg = cfg
        self.raw = cfg.out / "raw"
        self.result: dict = {"dataset": cfg.dataset, "bundle": str(resolve_bundle(cfg.bundle)),
                             "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}}

    def env(self, rate_per_user: float | None) -> dict[str, str]:
        return {"RECSYS_LOADTEST_BUNDLE": str(self.cfg.bundle), "RECSYS_LOADTEST_MIX": "recommend",
                "RECSYS_LOADTEST_CHECKS": "full", "RECSYS_LOADTEST_MAX_FAIL_RATIO": "1.0",
                "RECSYS_LOADTEST_RATE": "" if rate_per_user is None else f"{rate_per_user:.6f}"}

    def locust(self, url: str, pid: int, label: str, users: int, seconds: int,
               rate_per_user: float | None = None) -> LocustStats:
        return run_locust(url, self.raw / label, users=users, seconds=seconds, env=self.env(rate_per_user),
                          core=self.cfg.locust_core, server_pid=pid)

    def run(self) -> None:
        cfg = self.cfg
        with tempfile.TemporaryDirectory() as scratch:
            command = pinned([sys.executable, "-m", "serving", "--bundle", str(cfg.bundle), "--host", "127.0.0.1",
                              "--port", "0", "--workers", "1", "--events-db", f"{scratch}/events.sqlite"],
                             cfg.server_core)
            with running_server(command, self.raw / "server.log") as (server, url):
                rss = {"start": rss_mb(server.pid)}
                calibrate = self.locust(url, server.pid, "calibrate", cfg.users, cfg.calibrate_seconds)
                self.result["max_rps"] = calibrate.rps
                rss["after_calibrate"] = rss_mb(server.pid)
                log.info("calibrate: %.0f req/s max; overload: %d processes x %d users for %d s", calibrate.rps,
                         cfg.processes, cfg.overload_users, cfg.overload_seconds)
                self.result["overload"] = self.overload(url, server.pid)
                rss["after_overload"] = rss_mb(server.pid)
                rate = cfg.recovery_fraction * calibrate.rps
                recovery = self.locust(url, server.pid, "recovery", cfg.users, cfg.recovery_seconds,
                                       rate / cfg.users)
                rss["after_recovery"] = rss_mb(server.pid)
                self.result["recovery"] = {"target_rps": rate, **self.phase_row(recovery, "recovery")}
                self.result["server_rss_mb"] = rss

    def overload(self, url: str, pid: int) -> dict:
        results: list[LocustStats | Exception] = [None] * self.cfg.processes  # type: ignore[list-item]

        def one(number: int) -> None:
            try:  # only the first process samples the server (one sampler is enough)
                results[number] = run_locust(
                    url, self.raw / f"overload-{number + 1}", users=self.cfg.overload_users,
                    seconds=self.cfg.overload_seconds, env=self.env(None), core=self.cfg.locust_core,
                    server_pid=pid if number == 0 else None)
            except HarnessError as exc:
                results[number] = exc

        threads = [threading.Thread(target=one, args=(n,)) for n in range(self.cfg.processes)]
        before = scrape(url)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        server_side = server_view(before, scrape(url))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise HarnessError(f"an overload Locust process failed: {failed[0]}")
        rows = [self.phase_row(stats, f"overload-{n + 1}") for n, stats in enumerate(results)]
        accepted = sum(row["accepted"]["count"] for row in rows if row.get("accepted"))
        shed = sum(row["shed"]["count"] for row in rows if row.get("shed"))
        return {"processes": rows, "offered_rps": sum(row["rps"] for row in rows),
                "accepted": accepted, "shed": shed, "other_failures": sum(row["failures"] for row in rows) - shed,
                "server_cpu": results[0].server_cpu, "server_rss_mb_peak": results[0].server_rss_mb,
                "server_side": server_side}

    def phase_row(self, stats: LocustStats, label: str) -> dict:
        return {"rps": stats.rps, "requests": stats.requests, "failures": stats.failures, "p50_ms": stats.p50_ms,
                "p99_ms": stats.p99_ms, "max_ms": stats.max_ms, **split_latencies(self.raw / label)}


def server_view(before: str, after: str) -> dict:
    """The overload phase from the server's /metrics: p99 bounds (histogram buckets, seconds) of
    /recommend from entering the app to its answer, accepted and shed apart; the model queue's
    wait; requests shed by reason."""
    latency = "recsys_http_request_duration_seconds"

    def p99(metric: str, **labels: str) -> float | None:
        return quantile_bound(buckets(before, metric, **labels), buckets(after, metric, **labels), 0.99)

    shed_before = counts_by(before, "recsys_shed_requests", "reason")
    return {"accepted_p99_s": p99(latency, endpoint="/recommend", status="200"),
            "shed_p99_s": p99(latency, endpoint="/recommend", status="503"),
            "queue_wait_p99_s": p99("recsys_queue_wait_seconds"),
            "shed_by_reason": {reason: int(value - shed_before.get(reason, 0.0))
                               for reason, value in counts_by(after, "recsys_shed_requests", "reason").items()}}


def _bound_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return "past the last bucket" if seconds == float("inf") else f"≤ {seconds * 1e3:,.1f} ms"


def markdown(result: dict) -> str:
    over, rec, rss = result["overload"], result["recovery"], result["server_rss_mb"]
    server = over["server_side"]
    accepted = [row["accepted"] for row in over["processes"] if row.get("accepted")]
    shed = [row["shed"] for row in over["processes"] if row.get("shed")]

    def worst(rows: list[dict], key: str) -> str:
        return f"{max(row[key] for row in rows):.1f}" if rows else "–"

    s = result["settings"]
    return "\n".join([
        f"# Overload: {result['dataset']}", "",
        f"`python -m loadtest.overload --bundle {s['bundle']} --dataset {result['dataset']}`: one worker, default "
        f"batcher settings. Max (closed loop, {s['users']} users): **{result['max_rps']:.0f} req/s**. Overload: "
        f"{s['processes']} Locust processes x {s['overload_users']} closed-loop users for {s['overload_seconds']} s; "
        f"then {s['recovery_fraction']:.0%} of the max for {s['recovery_seconds']} s.", "",
        "| phase | offered req/s | answered 200 | shed 503 | other failures | accepted p50 ms | accepted p99 ms "
        "| shed p50 ms | shed p99 ms |", "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        f"| overload | {over['offered_rps']:.0f} | {over['accepted']:,} | {over['shed']:,} | "
        f"{over['other_failures']:,} | {worst(accepted, 'p50_ms')} | {worst(accepted, 'p99_ms')} | "
        f"{worst(shed, 'p50_ms')} | {worst(shed, 'p99_ms')} |",
        f"| recovery | {rec['rps']:.0f} (target {rec['target_rps']:.0f}) | {rec['requests'] - rec['failures']:,} | "
        f"{rec.get('shed', {}).get('count', 0):,} | {rec['failures'] - rec.get('shed', {}).get('count', 0):,} | "
        f"{rec['p50_ms']:.1f} | {rec['p99_ms']:.1f} | – | – |", "",
        "Percentiles over several Locust processes: the worst process's. Locust's latency includes the time a "
        "request waits in the kernel's socket buffers and in Locust itself; from the server's /metrics (from "
        "entering the app to the answer, histogram bucket bounds), the overload phase's accepted p99 "
        f"{_bound_ms(server['accepted_p99_s'])}, shed p99 {_bound_ms(server['shed_p99_s'])}, queue wait p99 "
        f"{_bound_ms(server['queue_wait_p99_s'])}; shed by reason: "
        + (", ".join(f"{reason} {count:,}" for reason, count in sorted(server["shed_by_reason"].items())) or "none")
        + ". Server RSS (MB): "
        + ", ".join(f"{name} {value:.0f}" for name, value in rss.items())
        + f"; peak during overload {over['server_rss_mb_peak'] or 0:.0f}.", ""])


def parse_args(argv: list[str] | None) -> OverloadConfig:
    parser = argparse.ArgumentParser(prog="python -m loadtest.overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest/overload"))
    parser.add_argument("--users", type=int, default=64, help="users of the calibration and recovery phases")
    parser.add_argument("--calibrate-seconds", type=int, default=20)
    parser.add_argument("--overload-users", type=int, default=400, help="closed-loop users per Locust process")
    parser.add_argument("--processes", type=int, default=2, help="Locust processes offering the overload")
    parser.add_argument("--overload-seconds", type=int, default=60)
    parser.add_argument("--recovery-seconds", type=int, default=30)
    parser.add_argument("--recovery-fraction", type=float, default=0.5)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    args = parser.parse_args(argv)
    for name in ("users", "calibrate_seconds", "overload_users", "processes", "overload_seconds", "recovery_seconds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.recovery_fraction <= 1:
        parser.error(f"--recovery-fraction must be in (0, 1], got {args.recovery_fraction}")
    return OverloadConfig(args.bundle, args.dataset, args.out, args.users, args.calibrate_seconds,
                          args.overload_users, args.processes, args.overload_seconds, args.recovery_seconds,
                          args.recovery_fraction, None if args.no_pin else 0, None if args.no_pin else 1)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    runner = Overload(cfg)
    try:
        runner.run()
    except HarnessError as exc:
        sys.stderr.write(f"python -m loadtest.overload: error: {exc}\n")
        return 1
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "overload.json").write_text(json.dumps(runner.result, indent=2) + "\n")
    (cfg.out / "overload.md").write_text(markdown(runner.result))
    log.info("wrote %s", cfg.out / "overload.md")
    return 0 if runner.result["recovery"]["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
