"""docs/scale.md: what runs where at 10x, 100x and 1000x today's 1M items / 10M interactions.

    python -m ops.scale_plan [--out docs/scale.md]

Every base figure is read from a report measured on this 2-core machine (the path is named next
to it) and every projection is that figure through the formula printed beside it; nothing here is
typed by hand. A missing report leaves its line saying which command measures it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REPORTS = Path("reports")
LOADTEST = REPORTS / "loadtest/synthetic-1m/summary.json"
INDEX = REPORTS / "bench/index/index_bench.json"
EVENTS = REPORTS / "bench/events/bench.json"
OUTOFCORE = REPORTS / "bench/outofcore/bench.json"
DDP = REPORTS / "bench/ddp/bench.json"
BASE_ITEMS, BASE_INTERACTIONS = 1_000_000, 10_000_000
SCALES = (1, 10, 100, 1000)
TARGET_UTILISATION = 0.6  # a replica's CPU share planned at peak: headroom for reloads and bursts
MACHINE_RAM_GB = 24


@dataclass(frozen=True)
class Line:
    what: str
    source: str
    formula: str
    values: list[str]  # one per scale


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("no %s: its lines say which command measures it", path)
        return None


def _missing(what: str, command: str) -> Line:
    return Line(what, f"not measured yet: `{command}`", "–", ["–"] * len(SCALES))


def serving_lines(loadtest: dict | None, index: dict | None) -> list[Line]:
    if loadtest is None or index is None:
        return [_missing("serving CPU per request", "make scale-1m; make bench")]
    run = next(r for r in loadtest["runs"] if r["bundle"] == "compressed" and r["mode"] == "max")
    cpu_ms = run["server_cpu"] / 100 * 1000 / run["rps"]  # one worker: CPU share x 1 s / requests in it
    ivf = next(r for r in index["results"] if r["factory"] == "IVF4096,SQ8")
    index_ms, vector_bytes = ivf["latency_k100"]["p50_ms"], ivf["bytes_per_vector"]
    fixed_ms = cpu_ms - index_ms

    def per_request(scale: int) -> float:  # IVF with nlist ~ sqrt(N): a probe scans ~ sqrt(N) vectors
        return fixed_ms + index_ms * math.sqrt(scale)

    def index_gb(scale: int) -> float:
        return vector_bytes * BASE_ITEMS * scale / 1e9

    def placement(scale: int) -> str:
        size = index_gb(scale)
        if size < MACHINE_RAM_GB / 4:
            return f"{size:.1f} GB: one copy per machine (mmap, shared by its workers)"
        shards = math.ceil(size / (MACHINE_RAM_GB / 4))
        return f"{size:.0f} GB: `IndexShards` over {shards} machines, or on-disk IVF lists (mmap)"

    return [
        Line("CPU ms per /recommend (compressed bundle, batched, max load)",
             f"{LOADTEST}: {run['rps']:.0f} req/s at {run['server_cpu']:.0f} % of one core; {INDEX}: IVF4096,SQ8 "
             f"p50 {index_ms:.2f} ms",
             f"c(s) = {fixed_ms:.2f} + {index_ms:.2f}·√s (towers + ranker fixed; IVF probe grows with √N)",
             [f"{per_request(s):.2f}" for s in SCALES]),
        Line("cores for 1,000 req/s at peak",
             "the line above",
             f"⌈1000 · c(s) / (1000 · {TARGET_UTILISATION})⌉ (planned at {TARGET_UTILISATION:.0%} CPU)",
             [str(math.ceil(1000 * per_request(s) / (1000 * TARGET_UTILISATION))) for s in SCALES]),
        Line("item index (IVF-SQ8, 64-d)", f"{INDEX}: {vector_bytes:.0f} B per vector",
             f"{vector_bytes:.0f} B · N; shard beyond a quarter of a {MACHINE_RAM_GB} GB machine (room for the "
             "rest of the bundle and a second copy while a reload loads)",
             [placement(s) for s in SCALES]),
    ]


def events_lines(events: dict | None, clicks_per_request: float = 0.5) -> list[Line]:
    if events is None:
        return [_missing("durable event appends", "python -m benchmarks.bench_events --out reports/bench/events")]

    def rate(backend: str, batch: int) -> float:
        return max(r["events_per_s"] for r in events["rows"] if r["backend"] == backend and r["batch"] == batch)

    single, batched = rate("postgresql", 1), rate("postgresql", 100)
    peak = [1000 * s ** 0.5 * clicks_per_request for s in SCALES]  # traffic assumed to grow with √catalogue
    return [
        Line("PostgreSQL durable appends/s", f"{EVENTS}: one event per commit {single:,.0f}/s, 100 per commit "
             f"{batched:,.0f}/s", "measured (fsync-bound per commit: batch to go past it)",
             [f"{single:,.0f} / {batched:,.0f}"] * len(SCALES)),
        Line("event volume at peak (events/s)", "assumption: 1,000 req/s today, traffic ~ √s, "
             f"{clicks_per_request} events per request",
             f"e(s) = 1000 · √s · {clicks_per_request}; commits needed unbatched = e(s) / {single:,.0f}",
             [f"{e:,.0f}: {e / single:.1f}× one-commit rate, {e / batched:.2f}× batched "
              f"({'one server, batched' if e < batched else 'partition by user over servers'})" for e in peak]),
    ]


def data_lines(outofcore: dict | None) -> list[Line]:
    if outofcore is None:
        return [_missing("split + examples of the log", "python -m benchmarks.bench_outofcore")]
    runs = [run for run in outofcore.values() if run.get("interactions")]
    big = max(runs, key=lambda run: (run["interactions"], -run["peak_rss_mb"]))
    lean = min((run for run in runs if run["interactions"] == big["interactions"]), key=lambda run: run["peak_rss_mb"])
    per_100m_s = lean["seconds"]["pipeline_wall"] * 1e8 / lean["interactions"]
    disk_per_100m = lean["disk_bytes"]["peak_work_dir"] * 1e8 / lean["interactions"] / 1e9

    def wall(scale: int) -> float:
        return per_100m_s * BASE_INTERACTIONS * scale / 1e8

    return [Line("validate + split + training examples (DuckDB, out of core)",
                 f"{OUTOFCORE}: {lean['interactions']:,} interactions in {lean['seconds']['pipeline_wall']:.0f} s, "
                 f"peak RSS {lean['peak_rss_mb']:,.0f} MB at memory limit {lean['memory_limit']}",
                 f"t(s) = {per_100m_s:.0f} s · interactions / 1e8 (linear: sorts spill); disk {disk_per_100m:.1f} GB "
                 "per 1e8; RSS bounded by the limit",
                 [f"{wall(s) / 60:,.0f} min, {disk_per_100m * BASE_INTERACTIONS * s / 1e8:,.0f} GB disk"
                  for s in SCALES])]


def training_lines(ddp: dict | None) -> list[Line]:
    if ddp is None:
        return [_missing("examples/s per training process", "torchrun --nproc_per_node=2 (reports/bench/ddp)")]
    per_process = ddp["examples_per_s_per_process"]
    workers = ddp["processes"]

    def hours(scale: int, procs: int) -> float:
        return BASE_INTERACTIONS * scale / (per_process * procs * ddp.get("efficiency", 1.0)) / 3600

    return [Line("one training epoch over the log (towers)",
                 f"{DDP}: {per_process:,.0f} examples/s per process with {workers} processes",
                 "t = interactions / (examples/s per process · P)",
                 [f"{hours(s, 1):,.1f} h with 1, {hours(s, 8):,.1f} h with 8" for s in SCALES])]


def render(lines: list[Line]) -> str:
    header = ["# Scale plan", "",
              "Generated by `python -m ops.scale_plan` from the reports named in each row (measured on one 2-core, "
              "24 GiB machine; noisy, shared). Columns: today's 1M items / 10M interactions (×1) and 10×, 100×, "
              "1000× both. A projection is only as good as its formula: each is printed, and each says what it "
              "assumes.", "",
              "| what | measured (source) | formula | " + " | ".join(f"×{s}" for s in SCALES) + " |",
              "|---|---|---|" + "---|" * len(SCALES)]
    rows = [f"| {line.what} | {line.source} | {line.formula} | " + " | ".join(line.values) + " |" for line in lines]
    notes = ["", "## What runs where", "",
             "- **Serving:** replicas behind HAProxy (`make serve-replicas`), one worker per core, the bundle mapped "
             "once per machine; add machines by the cores row. Past a quarter of a machine's memory the item index "
             "is sharded (`faiss.IndexShards` over machines, merged top-k) or kept as on-disk IVF lists.",
             "- **Events:** one PostgreSQL (`RECSYS_EVENTS_URL`) while the volume row stays under the batched "
             "append rate; single-event commits are fsync-bound, so clients (or a server-side group commit, not "
             "built yet) should batch. Beyond one server: partition by user.",
             "- **Data preparation:** `python -m recsys.outofcore` on one machine up to the disk it needs; its "
             "memory is bounded by `--memory-limit`.",
             "- **Training:** `torchrun --nproc_per_node=N` per machine, `--nnodes` across machines "
             "(recsys/train/distributed.py)."]
    return "\n".join(header + rows + notes) + "\n"


def plan() -> str:
    lines = [*serving_lines(_read(LOADTEST), _read(INDEX)), *events_lines(_read(EVENTS)),
             *data_lines(_read(OUTOFCORE)), *training_lines(_read(DDP))]
    return render(lines)


def main(argv: list[str] | None = None, make: Callable[[], str] = plan) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/scale.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(make())
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
