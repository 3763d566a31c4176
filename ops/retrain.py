"""``python -m ops.retrain``: logged feedback -> new model -> quality gate -> hot-reloaded server.

    python -m ops.retrain --dataset ml-100k --bundles artifacts/ml-100k/bundles \\
        [--events-db data/events.sqlite | --events-url postgresql://user@host:port/db] \\
        [--server http://127.0.0.1:8000] \\
        [--train-args='--epochs 5'] [--compress-args='--tower-epochs 5'] [--threshold 0.97] [--fast] [--force]

1. merge: the base log (a built-in dataset is exported first) plus every event in the server's
   event store (the SQLite file, or PostgreSQL when ``--events-url``/``RECSYS_EVENTS_URL`` is set),
   written as one Parquet log (+ catalogue, user table) in a fresh run directory;
2. train: ``python -m recsys.train`` into that run's model directory;
3. compress: ``python -m compression --out BUNDLES``: distils, measures and applies the quality
   gate; only when the gate passes does it publish new versions and swap the ``current`` the
   server reads. This module never writes under BUNDLES itself;
4. reload: ``POST /admin/reload`` on the running server (token from ``RECSYS_ADMIN_TOKEN``), then
   check it serves the new version. No server answering is fine: it loads ``current`` at start.

Re-running is safe: each run starts from the base log and the whole events DB (nothing is
merged twice), a lock keeps two runs apart, and when the merged data is exactly what the served
bundle was built from, steps 2-3 are skipped (``--force`` retrains anyway, e.g. with new flags).
Exit status: 0 done, 1 a step failed or the gate refused (the served bundle is untouched),
2 bad input, 3 a new bundle was published but the running server could not be switched to it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from compression.compress import HOLDOUT_DIR
from ops.merge import LogFiles, merge_events, write_log
from ops.server import ReloadFailed, ServerClient
from recsys.bundle.manifest import BundleError, load_manifest
from recsys.bundle.publish import current_version, resolve_bundle, version_dir
from recsys.data.datasets import BUILTIN, DEFAULT_DATA_DIR, load_dataset
from recsys.data.events import EventStoreUnavailable, open_event_store, redacted
from recsys.data.schema import DataError
from recsys.evaluate.backtest import backtest, load_bundle, split_rows_as_log
from recsys.pipeline.contract import ModelSpecError
from recsys.split import Split, temporal_split
from recsys.train.model_dir import load_config

log = logging.getLogger("ops.retrain")

STEPS = 4
KEEP_RUNS = 3
FAST_TRAIN = ["--epochs", "3", "--ranker-epochs", "2"]
FAST_COMPRESS = ["--tower-epochs", "3", "--ranker-epochs", "2", "--latency-requests", "50"]
EVENT_COLUMNS = ["user_id", "item_id", "timestamp", "event", "weight"]


class StepFailed(Exception):
    """Stop the run: ``str(exc)`` is the one line the user sees, ``code`` the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class RetrainConfig:
    dataset: str
    bundles: Path
    work_dir: Path
    events_db: Path
    events_url: str | None = None  # PostgreSQL; when set, events_db is not read
    data_dir: Path = DEFAULT_DATA_DIR
    items: Path | None = None
    users: Path | None = None
    server: str | None = "http://127.0.0.1:8000"
    train_args: list[str] = field(default_factory=list)
    compress_args: list[str] = field(default_factory=list)
    threshold: float | None = None
    force: bool = False
    keep_runs: int = KEEP_RUNS

    @property
    def event_store(self) -> str | Path:
        return self.events_url or self.events_db


def parse_args(argv: list[str] | None = None) -> RetrainConfig:
    parser = argparse.ArgumentParser(prog="python -m ops.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k", help="base log: a built-in dataset or a CSV/Parquet path")
    parser.add_argument("--items", type=Path, help="item catalogue for a base log file")
    parser.add_argument("--users", type=Path, help="user table for a base log file")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--events-db", type=Path, default=Path(os.environ.get("RECSYS_EVENTS_DB",
                                                                             "data/events.sqlite")),
                       help="the server's SQLite event store [RECSYS_EVENTS_DB] (unused when an events URL is set)")
    store.add_argument("--events-url", default=os.environ.get("RECSYS_EVENTS_URL") or None,
                       help="postgresql://user@host:port/db: the server's events are in PostgreSQL "
                       "[RECSYS_EVENTS_URL]")
    parser.add_argument("--bundles", type=Path, help="bundles root the server serves (default artifacts/NAME/bundles)")
    parser.add_argument("--work-dir", type=Path, help="run directories (default: next to --bundles, retrain/)")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="server to hot-reload")
    parser.add_argument("--no-reload", action="store_true", help="publish only; do not contact a server")
    parser.add_argument("--train-args", default="", help="extra flags for python -m recsys.train (one string)")
    parser.add_argument("--compress-args", default="", help="extra flags for python -m compression (one string)")
    parser.add_argument("--threshold", type=float, help="quality gate (compression --threshold)")
    parser.add_argument("--fast", action="store_true", help=f"few epochs: train {' '.join(FAST_TRAIN)}, "
                        f"compress {' '.join(FAST_COMPRESS)} (before --train-args/--compress-args)")
    parser.add_argument("--force", action="store_true", help="retrain even when nothing changed")
    parser.add_argument("--keep-runs", type=int, default=KEEP_RUNS, help="run directories to keep")
    args = parser.parse_args(argv)
    name = args.dataset if args.dataset in BUILTIN or args.dataset.startswith("synthetic") else Path(args.dataset).stem
    bundles = args.bundles or Path("artifacts") / name / "bundles"
    try:
        train_args, compress_args = shlex.split(args.train_args), shlex.split(args.compress_args)
    except ValueError as exc:
        parser.error(f"--train-args/--compress-args: {exc}")
    return RetrainConfig(
        dataset=args.dataset, bundles=bundles, work_dir=args.work_dir or bundles.parent / "retrain",
        events_db=args.events_db, events_url=args.events_url, data_dir=args.data_dir, items=args.items,
        users=args.users,
        server=None if args.no_reload else args.server.rstrip("/"),
        train_args=[*(FAST_TRAIN if args.fast else []), *train_args],
        compress_args=[*(FAST_COMPRESS if args.fast else []), *compress_args],
        threshold=args.threshold, force=args.force, keep_runs=max(1, args.keep_runs))


class Retrain:
    def __init__(self, cfg: RetrainConfig):
        self.cfg = cfg
        self.run_dir = new_run_dir(cfg.work_dir / "runs")
        config = vars(cfg) | {"events_url": cfg.events_url and redacted(cfg.events_url)}  # no password on disk
        self.record: dict = {"run": self.run_dir.name, "started_at": _now(), "config": _jsonable(config)}
        self.compressed_root, self.teacher_root = cfg.bundles / "compressed", cfg.bundles / "teacher"
        self.served_before = current_version(self.compressed_root)

    def run(self) -> int:
        try:
            files, fingerprint = self.merge()
            if self.unchanged(fingerprint):
                log.info("[2/%d] train: skipped; [3/%d] compress: skipped (no new data since bundle %s; "
                         "--force retrains anyway)", STEPS, STEPS, self.served_before)
                self.record["skipped"] = "data unchanged"
            else:
                model_dir = self.train(files)
                self.compress(files, model_dir)
                self.compare(files, int(load_config(model_dir).get("held_out", 1)))
            self.reload()
            self.record["outcome"] = "ok"
            return 0
        except StepFailed as exc:
            self.record["outcome"] = f"failed: {exc}"
            raise
        finally:
            self.record["finished_at"] = _now()
            (self.run_dir / "retrain.json").write_text(json.dumps(self.record, indent=2, default=str) + "\n")

    def merge(self) -> tuple[LogFiles, str]:
        cfg = self.cfg
        events = redacted(cfg.event_store)
        log.info("[1/%d] merge: base log %s + events from %s", STEPS, cfg.dataset, events)
        try:
            base = load_dataset(cfg.dataset, cfg.data_dir, cfg.items, cfg.users)
        except DataError as exc:
            raise StepFailed(f"base log: {' '.join(str(exc).split())}", 2) from exc
        try:
            merged = merge_events(base, read_events(cfg.event_store))
        except EventStoreUnavailable as exc:
            raise StepFailed(f"step 1/{STEPS} merge: {exc}; {self.still_serving()}") from exc
        files = write_log(merged, self.run_dir / "data", base.name)
        try:  # read back exactly as training will, so the fingerprint is the one the bundle records
            fingerprint = load_dataset(str(files.interactions), cfg.data_dir, files.items, files.users).fingerprint()
        except DataError as exc:
            raise StepFailed(f"merged log does not load: {' '.join(str(exc).split())}", 2) from exc
        log.info("[1/%d] merge: %s -> %s (fingerprint %s)", STEPS, merged.describe(), files.interactions, fingerprint)
        self.record["merge"] = {"base": cfg.dataset, "events_db": events, "n_base": merged.n_base,
                                "n_events": merged.n_events, "rows": len(merged.interactions),
                                "new_users": merged.new_users, "new_items": merged.new_items,
                                "log": str(files.interactions), "fingerprint": fingerprint}
        return files, fingerprint

    def unchanged(self, fingerprint: str) -> bool:
        if self.cfg.force or self.served_before is None:
            return False
        try:
            served = load_manifest(resolve_bundle(self.compressed_root), verify=False)
        except (BundleError, OSError):
            return False
        return served.data_fingerprint == fingerprint

    def train(self, files: LogFiles) -> Path:
        model_dir = self.run_dir / "model"
        log.info("[2/%d] train: towers + ranker into %s", STEPS, model_dir)
        command = [sys.executable, "-m", "recsys.train", *files.dataset_args(), "--data-dir", str(self.cfg.data_dir),
                   "--out", str(model_dir), *self.cfg.train_args]
        code, last_line = run_tool(command)
        if code != 0:
            raise StepFailed(f"step 2/{STEPS} train failed (exit {code}): {last_line}; {self.still_serving()}",
                             2 if code == 2 else 1)
        self.record["model_dir"] = str(model_dir)
        return model_dir

    def compress(self, files: LogFiles, model_dir: Path) -> None:
        cfg = self.cfg
        log.info("[3/%d] compress: distil, quantise, gate, publish into %s", STEPS, cfg.bundles)
        threshold = ["--threshold", str(cfg.threshold)] if cfg.threshold is not None else []
        command = [sys.executable, "-m", "compression", "--model", str(model_dir), *files.dataset_args(),
                   "--data-dir", str(cfg.data_dir), "--out", str(cfg.bundles),
                   "--reports-dir", str(self.run_dir / "reports"), *cfg.compress_args, *threshold]
        code, last_line = run_tool(command)
        if code == 1:
            raise StepFailed(f"step 3/{STEPS} {_gate_line(cfg.bundles / 'card.json', last_line)}; "
                             f"{self.still_serving()}")
        if code != 0:
            raise StepFailed(f"step 3/{STEPS} compress failed (exit {code}): {last_line}; {self.still_serving()}",
                             2 if code == 2 else 1)
        published = current_version(self.compressed_root)
        self.record["published"] = {"compressed": published, "teacher": current_version(self.teacher_root),
                                    "previous": self.served_before}
        log.info("[3/%d] compress: gate passed; %s/current is now %s (was %s)", STEPS, self.compressed_root,
                 published, self.served_before)

    def compare(self, files: LogFiles, held_out: int) -> None:
        """Report (the gate decides): the bundle served before and the candidate's hold-out build,
        backtested on the same events, the interactions the candidate was trained without (each
        user's last ``held_out``) that came after the served bundle's data cutoff: neither was
        built from them."""
        if self.served_before is None:
            return
        before = version_dir(self.compressed_root, self.served_before)
        candidate = self.cfg.bundles / HOLDOUT_DIR / "compressed"
        try:
            served = load_bundle(before)
            cutoff = (served.runtime.get("data") or {}).get("cutoff")
            if cutoff is None:
                log.info("[3/%d] backtest: skipped (bundle %s records no data cutoff)", STEPS, self.served_before)
                return
            dataset = load_dataset(str(files.interactions), self.cfg.data_dir, files.items, files.users)
            later = newest_events(temporal_split(dataset, held_out), cutoff)
            if later.empty:
                log.info("[3/%d] backtest: no held-out event is after %s's cutoff", STEPS, self.served_before)
                return
            scores = {"served_before": backtest(served, later).metrics,
                      "candidate_holdout": backtest(load_bundle(candidate), later).metrics}
        except (BundleError, DataError, ModelSpecError, OSError) as exc:
            log.warning("[3/%d] backtest: not run (%s)", STEPS, exc)
            return
        self.record["backtest"] = {"events": len(later), "cutoff": cutoff, **scores}
        log.info("[3/%d] backtest on %d newer events: bundle served before NDCG@10 %.4f, new hold-out build %.4f",
                 STEPS, len(later), scores["served_before"]["NDCG@10"], scores["candidate_holdout"]["NDCG@10"])

    def reload(self) -> None:
        cfg = self.cfg
        if cfg.server is None:
            log.info("[4/%d] reload: skipped (--no-reload)", STEPS)
            return
        expected = {v for v in (current_version(self.compressed_root), current_version(self.teacher_root)) if v}
        client = ServerClient(cfg.server, os.environ.get("RECSYS_ADMIN_TOKEN"))
        if not client.is_up():
            log.info("[4/%d] reload: no server answering at %s; it will serve %s when started (make serve)",
                     STEPS, cfg.server, current_version(self.compressed_root))
            self.record["reload"] = "no server"
            return
        try:
            outcome = client.reload(expected)
        except ReloadFailed as exc:
            raise StepFailed(f"step 4/{STEPS} reload: {exc}", 3) from exc
        self.record["reload"] = outcome
        if outcome["previous_version"] == outcome["version"]:  # e.g. a replica that follows `current` itself
            log.info("[4/%d] reload: %s already serves %s", STEPS, cfg.server, outcome["version"])
        else:
            log.info("[4/%d] reload: %s now serves %s (was %s)", STEPS, cfg.server, outcome["version"],
                     outcome["previous_version"])

    def still_serving(self) -> str:
        now = current_version(self.compressed_root)
        if now != self.served_before:  # a first build the gate refused: compression published the teacher
            return f"nothing was served before, so {self.compressed_root}/current is now the teacher bundle {now}"
        return f"nothing was published, {self.compressed_root}/current still is {self.served_before or 'unset'}"


def newest_events(split: Split, cutoff: int) -> pd.DataFrame:
    """The split's held-out interactions that came after ``cutoff``, in external ids."""
    events = split.gate_events()
    return split_rows_as_log(split, events[events["t"] > cutoff])


def read_events(location: str | Path) -> pd.DataFrame:
    """Every stored event, from the SQLite file or PostgreSQL URL the server writes to."""
    if isinstance(location, Path) and not location.exists():
        log.info("no events DB at %s: training on the base log alone", location)
        return pd.DataFrame(columns=EVENT_COLUMNS)
    with open_event_store(location) as store:
        return store.to_frame()


def run_tool(command: list[str]) -> tuple[int, str]:
    """Run a step's CLI with its own output (and progress bars) passed through; (exit code, last stderr line)."""
    log.info("$ %s", shlex.join(command))
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    tail = b""
    try:
        while chunk := os.read(process.stderr.fileno(), 1 << 16):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail = (tail + chunk)[-16384:]
        return process.wait(), _last_line(tail)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()


def _last_line(raw: bytes) -> str:
    lines = [line.strip() for line in raw.decode(errors="replace").replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line), "no error message")


def _gate_line(card_path: Path, fallback: str) -> str:
    try:
        gate = json.loads(card_path.read_text())["gate"]
    except (OSError, ValueError, KeyError):
        return fallback
    return f"quality gate refused the new model: {gate['decision']} (card: {card_path.with_suffix('.md')})"


def new_run_dir(runs: Path) -> Path:
    runs.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        candidate = runs / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise StepFailed(f"could not create a run directory under {runs}")


def prune_runs(runs: Path, keep: int) -> None:
    for old in sorted(p for p in runs.iterdir() if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old run directory %s", old)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed(f"another retrain is running (lock {lock_path}); wait for it to finish") from None
        yield


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _jsonable(values: dict) -> dict:
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    started = time.monotonic()
    try:
        with exclusive(cfg.work_dir / ".lock"):
            try:
                code = Retrain(cfg).run()
            finally:
                prune_runs(cfg.work_dir / "runs", cfg.keep_runs)
    except StepFailed as exc:
        sys.stderr.write(f"retrain: {exc}\n")
        return exc.code
    log.info("retrain finished in %.0f s", time.monotonic() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
