"""``python -m loadtest.compare``: teacher vs compressed vs a no-model ceiling, under the same load.

    python -m loadtest.compare --teacher OUT/teacher --compressed OUT/compressed --dataset ml-100k

Each server (``python -m serving``, one worker, or ``python -m loadtest.ceiling``) runs alone on
127.0.0.1, pinned to one core with Locust pinned to another. Per server: a short warm-up, a
closed-loop run for maximum throughput (``--users`` users, no think time), then a fixed-rate
run at ``--fixed-fraction`` of the teacher's maximum, which every server should sustain, so
their latencies compare at equal load. Traffic is ``/recommend?k=10`` for known users weighted
by history length plus ~10% unknown users, seeded identically for every server. Writes
``summary.json``, ``summary.md`` and ``summary.png`` under ``--out`` (raw CSVs and logs in ``raw/``).
Exit status: 0 clean, 1 some request failed or a run broke (the summary is still written), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.harness import HarnessError, LocustStats, pinned, run_locust, running_server
from loadtest.summary import write_summary
from recsys.bundle import BundleError, load_manifest, resolve_bundle

log = logging.getLogger(__name__)

KINDS = ("teacher", "compressed", "ceiling")


@dataclass(frozen=True)
class CompareConfig:
    teacher: Path
    compressed: Path
    dataset: str
    out: Path
    users: int = 64
    max_seconds: int = 40
    fixed_seconds: int = 40
    warmup_seconds: int = 5
    fixed_fraction: float = 0.6
    server_core: int | None = 0
    locust_core: int | None = 1
    seed: int = 0


def parse_args(argv: list[str] | None = None) -> CompareConfig:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, type=Path, help="teacher bundle or bundles root (fp32, exact)")
    parser.add_argument("--compressed", required=True, type=Path, help="compressed bundle or bundles root")
    parser.add_argument("--dataset", required=True, help="dataset name for the report")
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest"))
    parser.add_argument("--users", type=int, default=64, help="Locust users in both phases")
    parser.add_argument("--max-seconds", type=int, default=40, help="closed-loop (max throughput) run length")
    parser.add_argument("--fixed-seconds", type=int, default=40, help="fixed-rate run length")
    parser.add_argument("--warmup-seconds", type=int, default=5, help="unrecorded run before each server's phases")
    parser.add_argument("--fixed-fraction", type=float, default=0.6, help="fixed rate as a share of teacher max rps")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--locust-core", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("users", "max_seconds", "fixed_seconds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.fixed_fraction <= 1:
        parser.error(f"--fixed-fraction must be in (0, 1], got {args.fixed_fraction}")
    return CompareConfig(args.teacher, args.compressed, args.dataset, args.out, args.users, args.max_seconds,
                         args.fixed_seconds, max(0, args.warmup_seconds), args.fixed_fraction,
                         None if args.no_pin else args.server_core, None if args.no_pin else args.locust_core,
                         args.seed)


def bundle_bytes(bundle: Path) -> int:
    manifest = load_manifest(resolve_bundle(bundle), verify=False)
    return sum(int(entry["bytes"]) for entry in manifest.files.values())


def server_command(kind: str, bundle: Path, events_db: Path) -> list[str]:
    if kind == "ceiling":
        return [sys.executable, "-m", "loadtest.ceiling", "--bundle", str(bundle), "--host", "127.0.0.1",
                "--port", "0"]
    return [sys.executable, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", "0",
            "--workers", "1", "--events-db", str(events_db)]


def run_row(kind: str, mode: str, stats: LocustStats, size: int) -> dict:
    return {"bundle": kind, "mode": mode, "rps": stats.rps, "p50_ms": stats.p50_ms, "p95_ms": stats.p95_ms,
            "p99_ms": stats.p99_ms, "max_ms": stats.max_ms, "requests": stats.requests, "failures": stats.failures,
            "server_cpu": stats.server_cpu, "server_rss_mb": stats.server_rss_mb, "locust_cpu": stats.locust_cpu,
            "bundle_bytes": size}


class Comparison:
    def __init__(self, cfg: CompareConfig):
        self.cfg = cfg
        self.raw = cfg.out / "raw"
        self.runs: list[dict] = []
        self.problems: list[str] = []
        self.fixed_rps: float | None = None
        # Other work on the machine skews every number: the summary records how busy it was.
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]

    def locust_env(self, kind: str, rate_per_user: float | None) -> dict[str, str]:
        sample_from = self.cfg.teacher if kind == "teacher" else self.cfg.compressed
        env = {"RECSYS_LOADTEST_BUNDLE": str(sample_from), "RECSYS_LOADTEST_MIX": "recommend",
               "RECSYS_LOADTEST_CHECKS": "shape" if kind == "ceiling" else "full",
               "RECSYS_LOADTEST_SEED": str(self.cfg.seed), "RECSYS_LOADTEST_RATE": ""}
        if rate_per_user is not None:
            env["RECSYS_LOADTEST_RATE"] = f"{rate_per_user:.6f}"
        return env

    def measure(self, kind: str, bundle: Path, events_dir: Path) -> None:
        cfg = self.cfg
        size = 0 if kind == "ceiling" else bundle_bytes(bundle)
        command = pinned(server_command(kind, bundle, events_dir / f"{kind}.sqlite"), cfg.server_core)
        log.info("%s: starting server (%s)", kind, " ".join(command[:6]))
        with running_server(command, self.raw / f"{kind}-server.log") as (server, url):
            common = {"users": cfg.users, "core": cfg.locust_core, "server_pid": server.pid}
            if cfg.warmup_seconds:
                log.info("%s: warm-up %d s at %s", kind, cfg.warmup_seconds, url)
                run_locust(url, self.raw / f"{kind}-warmup", seconds=cfg.warmup_seconds,
                           env=self.locust_env(kind, None), **common)
            log.info("%s: closed loop, %d users, %d s", kind, cfg.users, cfg.max_seconds)
            stats = run_locust(url, self.raw / f"{kind}-max", seconds=cfg.max_seconds,
                               env=self.locust_env(kind, None), **common)
            self.record(kind, "max", stats, size)
            if self.fixed_rps is None:  # the teacher runs first and sets the rate everyone must sustain
                self.fixed_rps = max(1.0, cfg.fixed_fraction * stats.rps)
            log.info("%s: fixed rate %.0f req/s, %d s", kind, self.fixed_rps, cfg.fixed_seconds)
            stats = run_locust(url, self.raw / f"{kind}-fixed", seconds=cfg.fixed_seconds,
                               env=self.locust_env(kind, self.fixed_rps / cfg.users), **common)
            self.record(kind, "fixed", stats, size)

    def record(self, kind: str, mode: str, stats: LocustStats, size: int) -> None:
        row = run_row(kind, mode, stats, size)
        self.runs.append(row)
        log.info("%s %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d/%d failed, server CPU %s%%, Locust CPU %s%%",
                 kind, mode, stats.rps, stats.p50_ms, stats.p99_ms, stats.failures, stats.requests,
                 _pct(stats.server_cpu), _pct(stats.locust_cpu))
        if stats.failures or stats.exit_code:
            self.problems.append(f"{kind} {mode}: {stats.failures} failed requests, Locust exit {stats.exit_code} "
                                 f"(see {self.raw / f'{kind}-{mode}'}_failures.csv)")

    def summary(self) -> dict:
        def rps(kind: str, mode: str) -> float | None:
            return next((r["rps"] for r in self.runs if r["bundle"] == kind and r["mode"] == mode), None)

        def p99(kind: str) -> float | None:
            return next((r["p99_ms"] for r in self.runs if r["bundle"] == kind and r["mode"] == "fixed"), None)

        cfg = self.cfg
        return {
            "dataset": cfg.dataset,
            "runs": self.runs,
            "ratios": {"throughput": _ratio(rps("compressed", "max"), rps("teacher", "max")),
                       "p99_fixed": _ratio(p99("compressed"), p99("teacher")),
                       "of_ceiling": _ratio(rps("compressed", "max"), rps("ceiling", "max"))},
            "settings": {"users": cfg.users, "max_seconds": cfg.max_seconds, "fixed_seconds": cfg.fixed_seconds,
                         "warmup_seconds": cfg.warmup_seconds, "fixed_rps_target": self.fixed_rps,
                         "fixed_fraction": cfg.fixed_fraction, "server_core": cfg.server_core,
                         "locust_core": cfg.locust_core, "workers": 1, "traffic": "/recommend k=10, ~10% unknown users",
                         "teacher": str(resolve_bundle(cfg.teacher)), "compressed": str(resolve_bundle(cfg.compressed)),
                         "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                         "cpus": os.cpu_count(), "load_average_at_start": self.load_at_start,
                         "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                         "python": platform.python_version()},
            "problems": self.problems,
        }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    try:
        for bundle in (cfg.teacher, cfg.compressed):
            load_manifest(resolve_bundle(bundle), verify=False)
    except (BundleError, OSError) as exc:
        sys.stderr.write(f"python -m loadtest.compare: error: {exc} (build the bundles with `make bundles`)\n")
        return 2
    comparison = Comparison(cfg)
    with tempfile.TemporaryDirectory(prefix="loadtest-events-") as events_dir:
        for kind, bundle in zip(KINDS, (cfg.teacher, cfg.compressed, cfg.compressed), strict=True):
            try:
                comparison.measure(kind, bundle, Path(events_dir))
            except HarnessError as exc:
                comparison.problems.append(f"{kind}: {exc}")
                log.error("%s: %s", kind, exc)
                if comparison.fixed_rps is None:
                    break  # without the teacher's maximum there is no fixed rate to compare at
    paths = write_summary(comparison.summary(), cfg.out)
    log.info("wrote %s", ", ".join(str(path) for path in paths))
    for problem in comparison.problems:
        log.error("%s", problem)
    return 1 if comparison.problems else 0


if __name__ == "__main__":
    sys.exit(main())
