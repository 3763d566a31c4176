"""Server memory across hot reloads: does a reload free what it replaces?

``python -m benchmarks.bench_reload --a artifacts/ml-100k/bundles/teacher --b artifacts/ml-100k/bundles/compressed``

Starts ``python -m serving`` (one worker, 127.0.0.1) on bundle A, then ``POST /admin/reload``
``--reloads`` times alternating B, A, B, ... with a few requests before each, and reads the
server's resident set size after each reload. The bar
(issue 18): every reading from the 2nd on stays within 10 % of the 2nd (both bundles are then
loaded once); the two bundles differ in size, so each reading is compared with the same bundle's
reading in that first cycle (B: after the 1st reload, A: after the 2nd). Writes
``reload_memory.{md,json,png}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import httpx

from benchmarks.plots import finish_axes, save_figure
from loadtest.harness import rss_mb, running_server
from recsys.bundle.load import read_id_maps
from recsys.bundle.publish import resolve_bundle

log = logging.getLogger(__name__)

TOKEN = "bench-reload-token"
REQUESTS_PER_RELOAD = 50
BAR = 0.10


def measure(a: Path, b: Path, reloads: int) -> list[float]:
    """RSS (MB) after loading A, then after each reload."""
    users = [str(u) for u in read_id_maps(a)[0].ids[:REQUESTS_PER_RELOAD]]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "serving", "--bundle", str(a), "--host", "127.0.0.1", "--port", "0",
                   "--events-db", f"{scratch}/events.sqlite"]
        env = {"RECSYS_ADMIN_TOKEN": TOKEN}
        with running_server(command, Path(scratch) / "server.log", env=env) as (server, url), \
                httpx.Client(base_url=url, timeout=120) as client:
            readings = [rss_mb(server.pid)]
            for n in range(reloads):
                for user in users:
                    client.get("/recommend", params={"user": user}).raise_for_status()
                target = b if n % 2 == 0 else a
                client.post("/admin/reload", headers=headers, json={"path": str(target)}).raise_for_status()
                readings.append(rss_mb(server.pid))
                log.info("reload %d -> %s: RSS %.0f MB", n + 1, target.name, readings[-1])
    return readings


def write_report(readings: list[float], a: Path, b: Path, out: Path) -> dict:
    # readings[n] serves A for even n and B for odd n; the first cycle is readings[1] (B), readings[2] (A).
    baselines = {0: readings[2], 1: readings[1]}
    ratios = [value / baselines[n % 2] for n, value in enumerate(readings) if n >= 1]
    worst = max(ratios, key=lambda ratio: abs(ratio - 1))
    result = {"bundle_a": str(a), "bundle_b": str(b), "rss_mb": readings, "after_second_reload_mb": readings[2],
              "after_first_reload_mb": readings[1], "worst_ratio_to_first_cycle": worst,
              "within_bar": abs(worst - 1) <= BAR}
    out.mkdir(parents=True, exist_ok=True)
    (out / "reload_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {n} | {value:.0f} |" for n, value in enumerate(readings))
    (out / "reload_memory.md").write_text(
        f"# Server RSS across {len(readings) - 1} hot reloads\n\n"
        f"`python -m benchmarks.bench_reload --a {a} --b {b} --reloads {len(readings) - 1}`: one `python -m serving` "
        f"worker, {REQUESTS_PER_RELOAD} requests before each reload, alternating the two bundles.\n\n"
        f"First cycle: **{readings[1]:.0f} MB** serving B, **{readings[2]:.0f} MB** serving A; the reading "
        f"furthest from its bundle's first-cycle level is **{worst:.3f} ×** it (bar: within {BAR:.0%}: "
        f"{'yes' if result['within_bar'] else 'no'}).\n\n"
        f"| reloads | RSS MB |\n|---|---|\n{rows}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(len(readings)), readings, marker="o", label="server RSS")
    for level, name in ((readings[2], "A"), (readings[1], "B")):
        ax.axhspan(level * (1 - BAR), level * (1 + BAR), alpha=0.12, label=f"±10 % of serving {name}, first cycle")
    finish_axes(ax, "reloads", "RSS (MB)", "Server memory across hot reloads")
    save_figure(fig, out / "reload_memory.png")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_reload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="first bundle (or bundles root)")
    parser.add_argument("--b", type=Path, required=True, help="second bundle (or bundles root)")
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("reports/serving"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.reloads < 2:
        parser.error("--reloads must be at least 2 (the bar compares with the 2nd)")
    a, b = resolve_bundle(args.a), resolve_bundle(args.b)
    result = write_report(measure(a, b, args.reloads), a, b, args.out)
    log.info("%s", (args.out / "reload_memory.md").read_text())
    return 0 if result["within_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())
