"""``python -m loadtest.compare``: teacher vs compressed vs a no-model ceiling, under the same load.

    python -m loadtest.compare --teacher OUT/teacher --compressed OUT/compressed --dataset ml-100k

The three servers (``python -m serving`` with one worker, and ``python -m loadtest.ceiling``) run
on 127.0.0.1 pinned to one core, Locust pinned to another, one Locust run at a time. After a
warm-up, two phases: closed loop for maximum throughput (``--users`` users, no think time), then
a fixed rate at ``--fixed-fraction`` of the teacher's maximum, which every server should sustain,
so latencies compare at equal load. Each phase is split into ``--rounds`` rounds that visit the
servers in rotating order, so a neighbour's burst of work on a shared machine hits all of them
alike: req/s and CPU are medians over rounds, percentiles pool every round's samples. Traffic is
``/recommend?k=10`` for known users weighted by history length plus ~10% unknown users, seeded
the same for every server; at light load (one user) a server whose bundle has a search index also
gets ``/search?k=10`` in an equal share, and every row has p50/p99 per endpoint, so "/search p50
vs /recommend p50" is read from one run. Writes ``summary.json``, ``summary.md`` and ``summary.png`` under
``--out`` (Locust CSVs and logs in ``raw/``). Exit status: 0 clean, 1 some request failed or a run
broke (the summary is still written), 2 bad input.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.harness import HarnessError, LocustStats, pinned, run_locust, running_server
from loadtest.latency import SHED_SUFFIX, percentiles
from loadtest.server_metrics import buckets, histogram_delta, scrape
from loadtest.summary import write_summary
from recsys.bundle.load import has_search
from recsys.bundle.manifest import BundleError, load_manifest
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger(__name__)

KINDS = ("teacher", "compressed", "ceiling")
# The same bundles answering one request per model pass (the batcher's max_batch=1): what
# batching buys, measured in the same run ...
UNBATCHED = {"teacher-unbatched": "teacher", "compressed-unbatched": "compressed"}
# ... and without load shedding, as the server answered before it had a batcher.
UNBATCHED_ENV = {"RECSYS_MAX_BATCH": "1", "RECSYS_MAX_QUEUE": "1000000", "RECSYS_QUEUE_DEADLINE_S": "3600"}


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
    rounds: int = 3
    server_core: int | None = 0
    locust_core: int | None = 1
    seed: int = 0
    light_seconds: int = 15
    unbatched: bool = True


def parse_args(argv: list[str] | None = None) -> CompareConfig:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, type=Path, help="teacher bundle or bundles root (fp32, exact)")
    parser.add_argument("--compressed", required=True, type=Path, help="compressed bundle or bundles root")
    parser.add_argument("--dataset", required=True, help="dataset name for the report")
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest"))
    parser.add_argument("--users", type=int, default=64, help="Locust users in both phases")
    parser.add_argument("--max-seconds", type=int, default=40, help="closed-loop time per server (all rounds)")
    parser.add_argument("--fixed-seconds", type=int, default=40, help="fixed-rate time per server (all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per phase, servers in rotating order")
    parser.add_argument("--warmup-seconds", type=int, default=5, help="unrecorded run per server before measuring")
    parser.add_argument("--fixed-fraction", type=float, default=0.6, help="fixed rate as a share of teacher max rps")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--locust-core", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--light-seconds", type=int, default=15,
                        help="light load per server: one user, closed loop (0: skip)")
    parser.add_argument("--no-unbatched", action="store_true",
                        help="skip the teacher and compressed servers run with max_batch=1")
    args = parser.parse_args(argv)
    for name in ("users", "max_seconds", "fixed_seconds", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.fixed_fraction <= 1:
        parser.error(f"--fixed-fraction must be in (0, 1], got {args.fixed_fraction}")
    return CompareConfig(args.teacher, args.compressed, args.dataset, args.out, args.users, args.max_seconds,
                         args.fixed_seconds, max(0, args.warmup_seconds), args.fixed_fraction, args.rounds,
                         None if args.no_pin else args.server_core, None if args.no_pin else args.locust_core,
                         args.seed, max(0, args.light_seconds), not args.no_unbatched)


def bundle_bytes(bundle: Path) -> int:
    manifest = load_manifest(resolve_bundle(bundle), verify=False)
    return sum(int(entry["bytes"]) for entry in manifest.files.values())


def server_command(kind: str, bundle: Path, events_db: Path) -> list[str]:
    if kind == "ceiling":
        return [sys.executable, "-m", "loadtest.ceiling", "--bundle", str(bundle), "--host", "127.0.0.1",
                "--port", "0"]
    return [sys.executable, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1", "--port", "0",
            "--workers", "1", "--events-db", str(events_db)]


def batch_sizes(url: str) -> dict[str, float]:
    """The server's ``recsys_batch_size`` histogram now (cumulative, all endpoints)."""
    return buckets(scrape(url), "recsys_batch_size")


def run_row(kind: str, mode: str, rounds: list[LocustStats], size: int) -> dict:
    """One summary row from a phase's rounds: median req/s and CPU, percentiles over all samples."""
    pooled = [r.samples for r in rounds if r.samples is not None and len(r.samples)]
    if len(pooled) == len(rounds):
        latency = percentiles(np.concatenate(pooled))
    else:  # no exact samples: the middle round's Locust percentiles (whole milliseconds)
        latency = {key: _median([getattr(r, key) for r in rounds]) for key in ("p50_ms", "p95_ms", "p99_ms")}
        latency["max_ms"] = max(r.max_ms for r in rounds)
    return {"bundle": kind, "mode": mode, "rps": _median([r.rps for r in rounds]), **latency,
            "requests": sum(r.requests for r in rounds), "failures": sum(r.failures for r in rounds),
            "server_cpu": _median([r.server_cpu for r in rounds]),
            "server_rss_mb": max((r.server_rss_mb for r in rounds if r.server_rss_mb is not None), default=None),
            "locust_cpu": _median([r.locust_cpu for r in rounds]), "bundle_bytes": size,
            "endpoints": endpoint_latencies(rounds)}


def endpoint(name: str) -> str:
    """A Locust request name's route: "/search [known user]" -> "/search"."""
    return name.split(" ", 1)[0]


def endpoint_latencies(rounds: list[LocustStats]) -> dict[str, dict]:
    """p50/p99 and request count per route, every round's accepted (not shed) samples pooled; empty
    when a round recorded none by name."""
    if any(r.samples_by_name is None for r in rounds):
        return {}
    pooled: dict[str, list[np.ndarray]] = {}
    for stats in rounds:
        for name, samples in stats.samples_by_name.items():
            if not name.endswith(SHED_SUFFIX) and len(samples):
                pooled.setdefault(endpoint(name), []).append(samples)
    out = {}
    for route, parts in sorted(pooled.items()):
        samples = np.concatenate(parts)
        found = percentiles(samples)
        out[route] = {"p50_ms": found["p50_ms"], "p99_ms": found["p99_ms"], "requests": len(samples)}
    return out


@dataclass
class Server:
    kind: str
    bundle: Path
    url: str
    pid: int
    size: int
    search: bool = False  # its bundle has a search index (the light phase then sends /search too)


class Comparison:
    def __init__(self, cfg: CompareConfig):
        self.cfg = cfg
        self.raw = cfg.out / "raw"
        self.runs: list[dict] = []
        self.rounds: list[dict] = []
        self.problems: list[str] = []
        self.fixed_rps: float | None = None
        # Other work on the machine skews every number: the summary records how busy it was.
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]

    def locust_env(self, kind: str, rate_per_user: float | None, mix: str = "recommend") -> dict[str, str]:
        sample_from = self.cfg.teacher if UNBATCHED.get(kind, kind) == "teacher" else self.cfg.compressed
        env = {"RECSYS_LOADTEST_BUNDLE": str(sample_from), "RECSYS_LOADTEST_MIX": mix,
               "RECSYS_LOADTEST_CHECKS": "shape" if kind == "ceiling" else "full",
               "RECSYS_LOADTEST_SEED": str(self.cfg.seed), "RECSYS_LOADTEST_RATE": ""}
        if rate_per_user is not None:
            env["RECSYS_LOADTEST_RATE"] = f"{rate_per_user:.6f}"
        return env

    def run(self, events_dir: Path) -> None:
        cfg = self.cfg
        kinds = [*KINDS, *(UNBATCHED if cfg.unbatched else ())]
        with ExitStack() as stack:
            servers = []
            for kind in kinds:
                base = UNBATCHED.get(kind, kind)
                bundle = cfg.teacher if base == "teacher" else cfg.compressed
                command = pinned(server_command(base, bundle, events_dir / f"{kind}.sqlite"), cfg.server_core)
                env = UNBATCHED_ENV if kind in UNBATCHED else {}
                log.info("%s: starting %s", kind, " ".join(command[:6]))
                process, url = stack.enter_context(running_server(command, self.raw / f"{kind}-server.log", env=env))
                model = kind != "ceiling"
                servers.append(Server(kind, bundle, url, process.pid, bundle_bytes(bundle) if model else 0,
                                      model and has_search(bundle)))
            for server in servers:
                if cfg.warmup_seconds:
                    log.info("%s: warm-up %d s at %s", server.kind, cfg.warmup_seconds, server.url)
                    self.locust(server, "warmup", cfg.warmup_seconds, None)
            self.phase(servers, "max", cfg.max_seconds, None)
            teacher_max = next((r["rps"] for r in self.runs if r["bundle"] == "teacher" and r["mode"] == "max"), None)
            if not teacher_max:
                self.problems.append("no teacher maximum, so no fixed rate to compare at")
                return
            self.fixed_rps = max(1.0, cfg.fixed_fraction * teacher_max)
            self.phase(servers, "fixed", cfg.fixed_seconds, self.fixed_rps / cfg.users)
            if cfg.light_seconds:
                self.phase(servers, "light", cfg.light_seconds, None, users=1, mix="recommend+search")

    def phase(self, servers: list[Server], mode: str, seconds: int, rate_per_user: float | None,
              users: int | None = None, mix: str = "recommend") -> None:
        """``mix`` (a locustfile mix) where the server has a search index, /recommend alone elsewhere."""
        cfg = self.cfg
        users = users or cfg.users
        per_round = max(1, math.ceil(seconds / cfg.rounds))
        done: dict[str, list[LocustStats]] = {server.kind: [] for server in servers}
        batches_before = {server.kind: batch_sizes(server.url) for server in servers if server.kind != "ceiling"}
        for number in range(cfg.rounds):
            for server in servers[number % len(servers):] + servers[:number % len(servers)]:
                log.info("%s %s, round %d/%d: %d users, %s, %d s", server.kind, mode, number + 1, cfg.rounds,
                         users, f"{rate_per_user * users:.0f} req/s" if rate_per_user else "closed loop", per_round)
                try:
                    stats = self.locust(server, f"{mode}-{number + 1}", per_round, rate_per_user, users,
                                        mix if server.search else "recommend")
                except HarnessError as exc:
                    self.problems.append(f"{server.kind} {mode} round {number + 1}: {exc}")
                    log.error("%s", self.problems[-1])
                    continue
                done[server.kind].append(stats)
                self.record_round(server.kind, mode, number + 1, stats)
        for server in servers:
            if done[server.kind]:
                self.runs.append(run_row(server.kind, mode, done[server.kind], server.size))
                row = self.runs[-1]
                if server.kind in batches_before:
                    row["batch_sizes"] = histogram_delta(batches_before[server.kind], batch_sizes(server.url))
                log.info("%s %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d/%d failed, server CPU %s%%, Locust CPU %s%%",
                         server.kind, mode, row["rps"], row["p50_ms"], row["p99_ms"], row["failures"],
                         row["requests"], _pct(row["server_cpu"]), _pct(row["locust_cpu"]))

    def locust(self, server: Server, label: str, seconds: int, rate_per_user: float | None,
               users: int | None = None, mix: str = "recommend") -> LocustStats:
        return run_locust(server.url, self.raw / f"{server.kind}-{label}", users=users or self.cfg.users,
                          seconds=seconds,
                          env=self.locust_env(server.kind, rate_per_user, mix), core=self.cfg.locust_core,
                          server_pid=server.pid)

    def record_round(self, kind: str, mode: str, number: int, stats: LocustStats) -> None:
        self.rounds.append({"bundle": kind, "mode": mode, "round": number, "rps": stats.rps,
                            "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "requests": stats.requests,
                            "failures": stats.failures, "server_cpu": stats.server_cpu,
                            "locust_cpu": stats.locust_cpu})
        if stats.failures or stats.exit_code:
            self.problems.append(f"{kind} {mode} round {number}: {stats.failures} failed requests, Locust exit "
                                 f"{stats.exit_code} (see {self.raw / f'{kind}-{mode}-{number}'}_failures.csv)")

    def summary(self) -> dict:
        def rps(kind: str, mode: str) -> float | None:
            return next((r["rps"] for r in self.runs if r["bundle"] == kind and r["mode"] == mode), None)

        def p99(kind: str) -> float | None:
            return next((r["p99_ms"] for r in self.runs if r["bundle"] == kind and r["mode"] == "fixed"), None)

        def p50_light(kind: str, route: str = "/recommend") -> float | None:
            """``route``'s p50 at light load (the light phase may mix /search in)."""
            row = next((r for r in self.runs if r["bundle"] == kind and r["mode"] == "light"), None)
            return None if row is None else row["endpoints"].get(route, {}).get("p50_ms")

        def cpu(kind: str) -> float | None:  # server CPU ms per request at max load
            row = next((r for r in self.runs if r["bundle"] == kind and r["mode"] == "max"), None)
            return None if row is None or row["server_cpu"] is None or not row["rps"] else \
                10.0 * row["server_cpu"] / row["rps"]

        cfg = self.cfg
        return {
            "dataset": cfg.dataset,
            "runs": self.runs,
            "ratios": {"throughput": _ratio(rps("compressed", "max"), rps("teacher", "max")),
                       "p99_fixed": _ratio(p99("compressed"), p99("teacher")),
                       "of_ceiling": _ratio(rps("compressed", "max"), rps("ceiling", "max")),
                       "cpu_per_request_of_ceiling": _ratio(cpu("compressed"), cpu("ceiling")),
                       "light_p50_batched_vs_unbatched": _ratio(p50_light("compressed"),
                                                                p50_light("compressed-unbatched")),
                       "light_p50_search_vs_recommend": _ratio(p50_light("compressed", "/search"),
                                                               p50_light("compressed")),
                       "batching_throughput_compressed": _ratio(rps("compressed", "max"),
                                                                rps("compressed-unbatched", "max")),
                       "batching_throughput_teacher": _ratio(rps("teacher", "max"), rps("teacher-unbatched", "max"))},
            "settings": {"users": cfg.users, "max_seconds": cfg.max_seconds, "fixed_seconds": cfg.fixed_seconds,
                         "light_seconds": cfg.light_seconds, "unbatched": cfg.unbatched,
                         "rounds": cfg.rounds, "warmup_seconds": cfg.warmup_seconds,
                         "fixed_rps_target": self.fixed_rps, "fixed_fraction": cfg.fixed_fraction,
                         "server_core": cfg.server_core, "locust_core": cfg.locust_core, "workers": 1,
                         "traffic": "/recommend k=10, ~10% unknown users; at light load also /search k=10 "
                                    "(equal share; one or two words of a catalogue title, half signed in) where "
                                    "the bundle has a search index",
                         "teacher": str(resolve_bundle(cfg.teacher)), "compressed": str(resolve_bundle(cfg.compressed)),
                         "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                         "cpus": os.cpu_count(), "load_average_at_start": self.load_at_start,
                         "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                         "python": platform.python_version()},
            "rounds": self.rounds,
            "problems": self.problems,
        }


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None and not math.isnan(value)]
    return statistics.median(present) if present else None


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
        try:
            comparison.run(Path(events_dir))
        except HarnessError as exc:
            comparison.problems.append(str(exc))
            log.error("%s", exc)
    paths = write_summary(comparison.summary(), cfg.out)
    log.info("wrote %s", ", ".join(str(path) for path in paths))
    for problem in comparison.problems:
        log.error("%s", problem)
    return 1 if comparison.problems else 0


if __name__ == "__main__":
    sys.exit(main())
