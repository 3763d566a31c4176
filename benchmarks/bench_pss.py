"""Memory of a multi-worker server: what does a second worker add?

``python -m benchmarks.bench_pss --bundle artifacts/ml-100k/bundles/compressed [--bundle ...]``

For each bundle, starts ``python -m serving --bundle B --workers N --host 127.0.0.1`` with N = 1,
then N = 2, waits until every worker has started and ``/readyz`` answers, sends ``--requests``
``GET /recommend`` for the bundle's known users (a new connection each, so every worker answers
some), then reads ``/proc/PID/smaps_rollup`` of each worker (with 2 workers: the uvicorn master's
children; with 1: the server process itself) and the PSS of the bundle's own files mapped in it
(``/proc/PID/smaps``). PSS divides each shared page among the processes mapping it, so the PSS of
all the workers adds up to the memory they take together.

"Second worker adds" = (PSS of the two workers - PSS of the single worker) / PSS of the single
worker. The uvicorn master of the 2-worker server (it loads no bundle) is reported apart. PSS also
shares library pages with any other process on the machine using the same files (e.g. a training
run from the same venv), so compare runs made side by side.

``--code DIR`` runs the server from another checkout (``git worktree add /tmp/wt-base HEAD``) for
before / after figures; ``--compare`` puts a previous run's JSON beside this one in the report.
Writes ``pss.{md,json}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from loadtest.harness import running_server
from recsys.bundle.content import BundleFiles
from recsys.bundle.load import read_population
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger("benchmarks.bench_pss")

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180
SETTLE_S = 1.0  # after the last answer, before reading memory
ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Shared_Dirty", "Private_Clean",
                 "Private_Dirty", "Anonymous")


def _kb_fields(lines) -> dict[str, int]:
    fields = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def process_memory(pid: int, bundle_dir: Path) -> dict[str, float]:
    """MB figures of one process: totals from smaps_rollup, plus the PSS / RSS of the mappings of
    files under ``bundle_dir`` (arrays and index read with mmap)."""
    rollup = _kb_fields(Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines())
    bundle_pss = bundle_rss = 0
    in_bundle = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            in_bundle = len(head) == 6 and head[5].startswith(str(bundle_dir))
        elif in_bundle and head[0] in ("Pss:", "Rss:"):
            if head[0] == "Pss:":
                bundle_pss += int(head[1])
            else:
                bundle_rss += int(head[1])
    mb = {name.lower(): rollup.get(name, 0) / 1024 for name in ROLLUP_FIELDS}
    return {**mb, "shared": mb["shared_clean"] + mb["shared_dirty"],
            "private": mb["private_clean"] + mb["private_dirty"],
            "bundle_pss": bundle_pss / 1024, "bundle_rss": bundle_rss / 1024}


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def worker_pids(server_pid: int) -> tuple[list[int], int | None]:
    """(uvicorn worker processes, their master or None): a single-worker server is its own worker."""
    workers = [pid for pid in children(server_pid)
               if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # not multiprocessing's tracker
    return (workers, server_pid) if workers else ([server_pid], None)


def wait_ready(client: httpx.Client, log_path: Path, workers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        started = log_path.read_text().count("Application startup complete")
        try:
            ready = client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready and started >= workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{workers} worker(s) not ready within {READY_TIMEOUT_S} s (log: {log_path})")


def send_requests(url: str, users: list[str], threads: int = 4) -> int:
    def ask(user: str) -> int:
        with httpx.Client(base_url=url, timeout=30, headers={"Connection": "close"}) as client:
            return client.get("/recommend", params={"user": user, "k": 10}).status_code

    with ThreadPoolExecutor(threads) as pool:
        codes = list(pool.map(ask, users))
    failed = sum(code != 200 for code in codes)
    if failed:
        raise RuntimeError(f"{failed} of {len(codes)} /recommend requests failed")
    return len(codes)


def measure(bundle_dir: Path, workers: int, users: list[str], code: Path) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-P", "-m", "serving", "--bundle", str(bundle_dir), "--workers", str(workers),
                   "--host", "127.0.0.1", "--port", "0", "--events-db", f"{scratch}/events.sqlite",
                   "--log-level", "info"]
        log_path = Path(scratch) / "server.log"
        # -P: the server imports `code`'s packages (PYTHONPATH), not this directory's.
        with running_server(command, log_path, env={"PYTHONPATH": str(code)}) as (server, url), \
                httpx.Client(base_url=url, timeout=30) as client:
            wait_ready(client, log_path, workers)
            sent = send_requests(url, users)
            time.sleep(SETTLE_S)
            pids, master = worker_pids(server.pid)
            if len(pids) != workers:
                raise RuntimeError(f"expected {workers} worker processes, found {pids}")
            result = {"workers": [process_memory(pid, bundle_dir) for pid in pids], "requests": sent}
            if master is not None:
                result["master"] = process_memory(master, bundle_dir)
    result["workers_pss"] = sum(worker["pss"] for worker in result["workers"])
    log.info("%s, %d worker(s): PSS %s MB", bundle_dir, workers, _each(result["workers"], "pss"))
    return result


def bundle_result(path: Path, requests: int, code: Path, seed: int) -> dict:
    bundle_dir = resolve_bundle(path).resolve()
    ids = read_population(bundle_dir).users.ids
    users = [str(user) for user in np.random.default_rng(seed).choice(ids, size=requests)]
    runs = {str(n): measure(bundle_dir, n, users, code) for n in (1, 2)}
    one, two = runs["1"]["workers_pss"], runs["2"]["workers_pss"]
    return {"label": Path(path).name, "bundle": str(bundle_dir), "bundle_bytes": BundleFiles(bundle_dir).total_bytes(),
            "files": sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()),
            "runs": runs, "second_worker_adds": (two - one) / one}


def _each(workers: list[dict], field: str, digits: int = 1) -> str:
    return " / ".join(f"{worker[field]:.{digits}f}" for worker in workers)


def _row(label: str, bundle: dict) -> str:
    single, pair = bundle["runs"]["1"]["workers"][0], bundle["runs"]["2"]["workers"]
    return (f"| {bundle['label']} | {label} | {bundle['bundle_bytes'] / 1e6:.2f} | {single['pss']:.1f} | "
            f"{single['rss']:.1f} | {single['shared']:.1f} | {single['anonymous']:.1f} | {_each(pair, 'pss')} | "
            f"{_each(pair, 'rss')} | {_each(pair, 'shared')} | {_each(pair, 'bundle_pss', 2)} | "
            f"{bundle['runs']['2']['master']['pss']:.1f} | **{bundle['second_worker_adds']:.1%}** |")


def markdown(result: dict, baseline: dict | None) -> str:
    rows = []
    before = {bundle["label"]: bundle for bundle in (baseline or {}).get("bundles", [])}
    for bundle in result["bundles"]:
        if bundle["label"] in before:
            rows.append(_row("before", before[bundle["label"]]))
        rows.append(_row("after" if baseline else "", bundle))
    lines = [
        "# Serving memory per worker (PSS)", "",
        f"`{result['command']}`", "",
        f"Server code: `{result['code']}`" + (f"; before: `{baseline['code']}` (`{baseline['command']}`)"
                                               if baseline else "") + ".",
        f"Each configuration answered {result['requests']} `GET /recommend` for known users (new connection each, "
        "4 at a time) before memory was read. MB = 2^20 bytes. PSS splits each shared page among the processes "
        "mapping it; *shared* = Shared_Clean + Shared_Dirty; *anon* = anonymous memory (private heap); "
        "*bundle PSS* = PSS of the bundle's own files mapped in the worker (mmap'd arrays and index).", "",
        "**Second worker adds** = (PSS of the 2 workers - PSS of the single worker) / PSS of the single worker; "
        "the 2-worker server's uvicorn master (it loads no bundle) is listed apart.", "",
        "| bundle | code | bundle MB (all files) | 1 worker: PSS | RSS | shared | anon | 2 workers: PSS each | "
        "RSS each | shared each | bundle PSS each | master PSS | second worker adds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, ""]
    for bundle in result["bundles"]:
        for label, shown in (("before: ", before.get(bundle["label"])), ("", bundle)):
            if shown is not None:
                lines += [f"{label}`{bundle['label']}` = `{shown['bundle']}`: {', '.join(shown['files'])}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_pss", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True,
                        help="bundle or bundles root (repeat for several)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose `serving` runs (default: this one)")
    parser.add_argument("--compare", type=Path, help="a previous run's pss.json, shown as 'before'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/serving"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    code = args.code.resolve()
    result = {"command": "python -m benchmarks.bench_pss " + " ".join(argv if argv is not None else sys.argv[1:]),
              "code": str(code), "requests": args.requests,
              "bundles": [bundle_result(path, args.requests, code, args.seed) for path in args.bundle]}
    baseline = json.loads(args.compare.read_text()) if args.compare else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pss.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pss.md").write_text(markdown(result, baseline))
    log.info("wrote %s", args.out / "pss.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
