"""Out-of-core validation, split and training examples at scale: time, peak memory and disk.

    python -m benchmarks.bench_outofcore --interactions 10000000
    python -m benchmarks.bench_outofcore --interactions 100000000

The log is the training ladder's (`benchmarks.bench_train.ladder_log`: synthetic-1m-shaped, 1M
items, 20 interactions per user) in DATA_DIR/synthetic/ladder-<items>-<n>, generated once and
reused while its config matches. The generator writes one chunk of users at a time (one Parquet
row group each), so the log is never in memory whole, and the rows are the same for a seed
whatever the size of the machine. `python -m recsys.outofcore` then runs under
`benchmarks.memory_profile` (RSS of the process tree, sampled) while a thread samples the disk
its output and spill directories take. ``--check-in-memory`` also loads the log in pandas and
checks the split and the examples against `temporal_split` and the trainer's (only for logs that
fit). Writes OUT/bench.json (one entry per log size and memory limit, kept across runs), OUT/README.md and each
run's profile in OUT/<n>_<limit>/memory.*; the pipeline's output is deleted unless ``--keep-output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

from benchmarks.bench_train import INTERACTIONS_PER_USER, ladder_log
from benchmarks.memory_profile import MAX_KEPT_SAMPLES, markdown, plot, profile

log = logging.getLogger(__name__)

# Disk the pipeline needs, as a multiple of the log's Parquet size: split + examples + DuckDB's
# spill at their peak (2.2x measured at 10M under 6GB, 3.5x under a 500MB limit that spills more;
# reports/bench/outofcore/README.md), with room to spare.
DISK_FACTOR = 6
TARGET_INTERACTIONS = 100_000_000


class DiskSampler:
    """The largest total size of the files under ``root`` seen while running, sampled."""

    def __init__(self, root: Path, every_s: float = 1.0):
        self.root, self.every_s, self.peak = root, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _size(self) -> int:
        total = 0
        for path in self.root.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:  # a spill file removed between listing and reading
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._size())
            self._stop.wait(self.every_s)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._size())  # a run shorter than a sampling interval counts too


def write_profile(result: dict, prefix: Path) -> None:
    """memory_profile's OUT.md, OUT.png and OUT.json for one run."""
    prefix.with_suffix(".md").write_text(markdown(result))
    plot(result, prefix.with_suffix(".png"))
    samples = result["samples"]
    kept = {**result, "samples": samples[::max(1, len(samples) // MAX_KEPT_SAMPLES)]}
    prefix.with_suffix(".json").write_text(json.dumps(kept, indent=1) + "\n")


def check_in_memory(interactions: Path, items: Path, out: Path) -> dict:
    """The out-of-core split and examples against the in-memory path on the same files."""
    import numpy as np

    from recsys.data.datasets import load_dataset
    from recsys.outofcore import load_examples, read_split
    from recsys.split import temporal_split
    from recsys.train.towers import SequenceWindows

    started = time.perf_counter()
    expected = temporal_split(load_dataset(str(interactions), items=items))
    seconds = time.perf_counter() - started
    actual = read_split(out)
    split_equal = actual.users == expected.users and actual.items == expected.items and all(
        getattr(actual, part).equals(getattr(expected, part)[["u", "i", "t", "row"]].reset_index(drop=True))
        for part in ("train", "valid", "test"))
    examples = load_examples(out)
    windows = SequenceWindows(expected, examples["meta"]["history_len"])
    examples_equal = all(np.array_equal(examples[name], wanted) for name, wanted in (
        ("users", windows.users), ("items", windows.items), ("position", windows.position),
        ("log_q", windows.log_q.numpy()), ("window_ends", windows.ends)))
    return {"split_equal": bool(split_equal), "examples_equal": bool(examples_equal),
            "in_memory_split_seconds": round(seconds, 1),
            "in_memory_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run(args: argparse.Namespace) -> dict:
    n = args.interactions
    started = time.perf_counter()
    paths = ladder_log(n, args.data_dir / "synthetic", args.items)
    generate_seconds = round(time.perf_counter() - started, 1)
    log_bytes = paths.interactions.stat().st_size
    work = args.work_dir / str(n)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    free = shutil.disk_usage(work).free
    if free < DISK_FACTOR * log_bytes:
        need = DISK_FACTOR * log_bytes / 1e9
        raise SystemExit(f"{free / 1e9:.1f} GB free under {work}, the run may need {need:.1f} GB ({DISK_FACTOR}x "
                         f"the {log_bytes / 1e9:.1f} GB log): free some, or give --work-dir elsewhere")
    out = work / "out"
    command = [sys.executable, "-m", "recsys.outofcore", "--log", str(paths.interactions), "--items", str(paths.items),
               "--out", str(out), "--memory-limit", args.memory_limit, "--threads", str(args.threads)]
    report_dir = args.out / f"{n}_{args.memory_limit}"
    report_dir.mkdir(parents=True, exist_ok=True)
    log.info("out-of-core pipeline on %d interactions (%.2f GB log): %s", n, log_bytes / 1e9, " ".join(command))
    with DiskSampler(work) as disk:
        profiled = profile(command, report_dir / "memory.log")
    write_profile(profiled, report_dir / "memory")
    if profiled["returncode"] != 0:
        raise SystemExit(f"the pipeline failed (exit {profiled['returncode']}): see {report_dir / 'memory.log'}")
    record = json.loads((out / "outofcore.json").read_text())
    result = {
        "interactions": n, "users": record["users"], "items": record["items"],
        "rows": record["rows"], "dropped_users": record["dropped_users"], "windows": record["examples"]["windows"],
        "seconds": {"generate": generate_seconds, **{k: v["seconds"] for k, v in record["steps"].items()},
                    "pipeline_wall": profiled["wall_seconds"]},
        "peak_rss_mb": profiled["peak"]["rss_mb"], "peak_phase": profiled["peak"]["phase"],
        "disk_bytes": {"log": log_bytes, "split": record["outputs_bytes"]["split"],
                       "examples": record["outputs_bytes"]["examples"], "peak_work_dir": disk.peak},
        "memory_limit": args.memory_limit, "threads": args.threads, "duckdb": record["versions"]["duckdb"],
        "command": " ".join(["python", *command[1:]]), "log": str(paths.interactions),
        "input_sha256": record["input"]["log"]["sha256"],
    }
    if args.check_in_memory:
        log.info("checking against the in-memory split of the same log")
        result["check"] = check_in_memory(paths.interactions, paths.items, out)
    if not args.keep_output:
        shutil.rmtree(work, ignore_errors=True)
    return result


def extrapolate(row: dict, generate_seconds: float, target: int = TARGET_INTERACTIONS) -> dict:
    """Linear in rows (sorts are n log n: a floor, not a ceiling); ``generate_seconds`` from the
    run that made the log (a run that reused it took 0)."""
    scale = target / row["interactions"]
    seconds = {**{step: round(value * scale) for step, value in row["seconds"].items()},
               "generate": round(generate_seconds * scale)}
    return {"interactions": target, "scale": scale, "seconds": seconds,
            "total_minutes": round((seconds["generate"] + seconds["pipeline_wall"]) / 60, 1),
            "disk_gb": round((row["disk_bytes"]["peak_work_dir"] + row["disk_bytes"]["log"]) * scale / 1e9, 1)}


def readme(rows: list[dict]) -> str:
    gb = 1e9
    lines = [
        "# Out-of-core validation, split and training examples",
        "",
        "`python -m recsys.outofcore` (DuckDB, spilling to disk under `--memory-limit`) on the training ladder's "
        f"synthetic log (1M items, {INTERACTIONS_PER_USER} interactions per user), measured by "
        "`python -m benchmarks.bench_outofcore --interactions N` on the shared 2-core, 24 GiB machine. Peak RSS: the "
        "process tree's, sampled every 0.5 s by `benchmarks.memory_profile` (DuckDB runs in the Python process). "
        "Peak work dir: split + examples + DuckDB's spill files at their largest, sampled every second. "
        "Generation: `recsys.data.synthetic`, one chunk of 50,000 users at a time (0 s when the log was reused).",
        "",
        "- The generator has always written the log chunk by chunk (one Parquet row group per 50,000 users, each "
        "chunk from its own random stream), so the 100M log is exactly what `generate` makes for this config and "
        "seed; nothing holds it in memory whole.",
        "- DuckDB's `6GB` is 6·10⁹ bytes (5,722 MiB); RSS figures are MiB. Past the limit the process holds Python, "
        "numpy and allocations DuckDB does not count; the margin to 8 GB is what the table shows.",
        "- Each run's memory profile (phase at the peak, RSS over time): `<n>_<limit>/memory.md` and "
        "`<n>_<limit>/memory.png`.",
        "",
        "| interactions | users | items | train rows | generate s | validate s | split s | examples s | "
        "pipeline wall s | peak RSS MB | memory limit | log GB | split + examples GB | peak work dir GB |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for row in rows:
        s, d = row["seconds"], row["disk_bytes"]
        lines.append(
            f"| {row['interactions']:,} | {row['users']:,} | {row['items']:,} | {row['rows']['train']:,} | "
            f"{s['generate']:,.0f} | {s['validate']:,.0f} | {s['split']:,.0f} | {s['examples']:,.0f} | "
            f"{s['pipeline_wall']:,.0f} | {row['peak_rss_mb']:,.0f} | {row['memory_limit']} | {d['log'] / gb:.2f} | "
            f"{(d['split'] + d['examples']) / gb:.2f} | {d['peak_work_dir'] / gb:.2f} |")
    checked = [row for row in rows if "check" in row]
    for row in checked:
        check = row["check"]
        lines += ["", f"Checked at {row['interactions']:,} interactions ({row['memory_limit']} limit) against the "
                      f"in-memory path on the same log: split equal row for row: **{check['split_equal']}**, "
                      f"training examples equal: **{check['examples_equal']}** (pandas `temporal_split` took "
                      f"{check['in_memory_split_seconds']} s; the bench process that ran it peaked at "
                      f"{check['in_memory_peak_rss_mb']:,.0f} MB)."]
    size = max(row["interactions"] for row in rows)
    largest = [row for row in rows if row["interactions"] == size]
    if size < TARGET_INTERACTIONS:
        generate_seconds = max(row["seconds"]["generate"] for row in largest)
        for row in largest:
            guess = extrapolate(row, generate_seconds)
            seconds = guess["seconds"]
            lines += ["", f"Extrapolated linearly from {size:,} to {TARGET_INTERACTIONS:,} interactions "
                          f"({row['memory_limit']} limit): generation ~{seconds['generate']:,} s, pipeline "
                          f"~{seconds['pipeline_wall']:,} s, ~{guess['total_minutes']} min in all; "
                          f"~{guess['disk_gb']} GB of disk (log + peak work dir)."]
    lines += ["", "Commands:", ""] + [f"- `{row['command']}`" for row in rows] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_outofcore", description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=None, help="catalogue size (default 1M, the ladder's)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--work-dir", type=Path, default=Path("data/outofcore"),
                        help="the pipeline's output and spill directory (deleted after, unless --keep-output)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/outofcore"))
    parser.add_argument("--memory-limit", default="6GB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--check-in-memory", action="store_true",
                        help="compare with the in-memory split and examples (the log must fit in memory)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    bench = args.out / "bench.json"
    runs = json.loads(bench.read_text()) if bench.exists() else {}
    runs[f"{args.interactions} @ {args.memory_limit}"] = result
    runs = dict(sorted(runs.items(), key=lambda item: (item[1]["interactions"], item[0])))
    bench.write_text(json.dumps(runs, indent=2) + "\n")
    (args.out / "README.md").write_text(readme(list(runs.values())))
    log.info("%d interactions: pipeline %.0f s, peak RSS %.0f MB, peak work dir %.2f GB", args.interactions,
             result["seconds"]["pipeline_wall"], result["peak_rss_mb"], result["disk_bytes"]["peak_work_dir"] / 1e9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
