"""`python -m recsys.outofcore --log LOG --out DIR`: validate, split and build training examples out of core.

Steps, each logged and timed: fingerprint (sha256 of the input files), validate (DuckDB, loaders'
messages), split (DuckDB, spilling to a temporary directory that is removed at the end),
examples (numpy, streamed). DuckDB's progress bar shows the long queries, tqdm the example passes.
Writes DIR/outofcore.json: rows, users, items, seconds per step, peak RSS, DuckDB version, input
fingerprint and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb

from recsys.data.schema import DataError
from recsys.outofcore.engine import connect
from recsys.outofcore.examples import DEFAULT_HISTORY_LEN, EXAMPLES_DIR, build_examples
from recsys.outofcore.split import SPLIT_DIR, split_log
from recsys.outofcore.validate import validate_catalog, validate_log

log = logging.getLogger(__name__)

RECORD = "outofcore.json"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (DuckDB runs inside it): Linux's VmHWM, which
    starts afresh at exec, where ru_maxrss keeps the peak of the process that forked this one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def file_fingerprint(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recsys.outofcore", description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, type=Path, help="interaction log: .parquet, .csv or .tsv")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--items", type=Path, help="item catalog: its items join the item map (as in recsys.train)")
    parser.add_argument("--memory-limit", default="6GB", help="DuckDB's memory_limit (default 6GB)")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2)")
    parser.add_argument("--temp-dir", type=Path, help="where DuckDB spills (default: a directory inside --out, "
                                                       "removed at the end)")
    parser.add_argument("--history-len", type=int, default=DEFAULT_HISTORY_LEN,
                        help=f"the towers' history length, for the sequence windows (default {DEFAULT_HISTORY_LEN})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.history_len < 1:
        parser.error(f"--history-len must be >= 1, got {args.history_len}")
    return args


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    steps: dict[str, dict] = {}

    @contextmanager
    def step(name: str):
        log.info("step %s", name)
        started = time.perf_counter()
        yield
        steps[name] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb_so_far": peak_rss_mb()}
        log.info("step %s done in %.1f s (peak RSS so far %.0f MB)", name, steps[name]["seconds"],
                 steps[name]["peak_rss_mb_so_far"])

    temp_base = Path(args.temp_dir) if args.temp_dir else out
    temp_base.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix="duckdb-spill-", dir=temp_base))
    try:
        with step("fingerprint"):
            inputs = {"log": file_fingerprint(Path(args.log)) if Path(args.log).is_file() else {"path": str(args.log)}}
            if args.items is not None and Path(args.items).is_file():
                inputs["items"] = file_fingerprint(Path(args.items))
        con = connect(temp, args.memory_limit, args.threads, progress)
        try:
            with step("validate"):
                validated = validate_log(con, args.log, temp)
                catalog = validate_catalog(con, args.items, validated, temp) if args.items is not None else None
            with step("split"):
                summary = split_log(con, validated, out, catalog)
        finally:
            con.close()
        with step("examples"):
            examples = build_examples(out, args.history_len, progress=progress)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    record = {
        "arguments": {key: None if value is None else str(value) for key, value in vars(args).items()},
        "input": inputs,
        "rows": {key: summary[key] for key in ("rows", "deduplicated", "kept", "train", "valid", "test")},
        "users": summary["users"], "items": summary["items"], "dropped_users": summary["dropped_users"],
        "examples": examples,
        "steps": steps,
        "seconds": round(sum(s["seconds"] for s in steps.values()), 2),
        "peak_rss_mb": peak_rss_mb(),
        "outputs_bytes": {name: tree_bytes(out / name) for name in (SPLIT_DIR, EXAMPLES_DIR)},
        "settings": {"memory_limit": args.memory_limit, "threads": args.threads, "temp_dir": str(temp_base),
                     "history_len": args.history_len},
        "versions": {"duckdb": duckdb.__version__, "python": platform.python_version()},
    }
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s: %d rows -> %d train / %d valid / %d test, %d users, %d items, %.0f s, peak RSS %.0f MB",
             out, summary["rows"], summary["train"], summary["valid"], summary["test"], summary["users"],
             summary["items"], record["seconds"], record["peak_rss_mb"])
    return record


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0
