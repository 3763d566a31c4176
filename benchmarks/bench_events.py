"""Event-store append throughput: SQLite (one file) and PostgreSQL (a local throw-away server), by
batch size and number of concurrent writers, through `recsys.data.events.open_event_store`, the
call POST /events makes. Every append is durable when it returns (fsync / committed WAL).

    python -m benchmarks.bench_events --out reports/bench/events

Feeds docs/scale.md's event-volume line: events/s one store takes, to set against clicks per
second at a given traffic. Medians of ``--rounds`` rounds; the machine is shared, so only ratios
within one run compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from ops.postgres import PostgresUnavailable, running_postgres
from recsys.data.events import Event, open_event_store

log = logging.getLogger(__name__)

BATCHES = (1, 10, 100)
WRITERS = (1, 4)


def one_round(location: str, batch: int, writers: int, events_per_writer: int, tag: str) -> float:
    """Events per second for ``writers`` threads each appending ``events_per_writer`` events in batches."""
    def write(writer: int) -> None:
        with open_event_store(location) as store:
            for start in range(0, events_per_writer, batch):
                store.append([Event(f"u{writer}-{i}", f"i{i % 1000}", "click", event_id=f"{tag}-{writer}-{i}")
                              for i in range(start, min(start + batch, events_per_writer))])

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return writers * events_per_writer / (time.perf_counter() - started)


def measure(backend: str, location: str, events: int, rounds: int) -> list[dict]:
    rows = []
    for batch in BATCHES:
        for writers in WRITERS:
            per_writer = max(batch, events // writers)
            rates = [one_round(location, batch, writers, per_writer, f"{batch}-{writers}-{r}") for r in range(rounds)]
            rows.append({"backend": backend, "batch": batch, "writers": writers,
                         "events_per_s": statistics.median(rates), "rounds": [round(rate, 1) for rate in rates]})
            log.info("%s batch %d writers %d: %.0f events/s", backend, batch, writers, rows[-1]["events_per_s"])
    return rows


def markdown(rows: list[dict], events: int, rounds: int) -> str:
    lines = ["# Event-store append throughput", "",
             f"`python -m benchmarks.bench_events`: {events:,} events per setting, median of {rounds} rounds, each "
             "append durable when it returns (SQLite WAL with synchronous=FULL; PostgreSQL committed with "
             "synchronous_commit=on, a throw-away local server from Debian's package). Every event has an "
             "`event_id` (the idempotent path). 2 shared cores: compare within this table only.", "",
             "| store | batch | writers | events/s |", "|---|--:|--:|--:|"]
    lines += [f"| {row['backend']} | {row['batch']} | {row['writers']} | {row['events_per_s']:,.0f} |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--events", type=int, default=2000, help="events per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-events-") as scratch:
        rows = measure("sqlite", str(Path(scratch) / "events.sqlite"), args.events, args.rounds)
    try:
        with running_postgres() as server:
            rows += measure("postgresql", server.url(server.create_database()), args.events, args.rounds)
    except PostgresUnavailable as exc:
        log.error("PostgreSQL not measured: %s", exc)
        return 1
    (out / "bench.json").write_text(json.dumps({"events": args.events, "rounds": args.rounds, "rows": rows},
                                               indent=2) + "\n")
    (out / "README.md").write_text(markdown(rows, args.events, args.rounds))
    log.info("wrote %s", out / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
