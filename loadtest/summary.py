"""``summary.json``, ``summary.md`` and ``summary.png`` from one comparison."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from recsys.strict_json import without_nan

LOCUST_BOUND_CPU = 90.0  # Locust above this share of its core measures itself, not the server


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _mb(size: int | None) -> str:
    return "–" if not size else f"{size / 2**20:.2f}"


def markdown(summary: dict) -> str:
    settings, ratios = summary.get("settings", {}), summary["ratios"]
    rounds = settings.get("rounds", 1)
    lines = [f"# Load test: {summary['dataset']}", "",
             f"One uvicorn worker per server on core {settings.get('server_core')}, Locust on core "
             f"{settings.get('locust_core')}, {settings.get('users')} users, traffic {settings.get('traffic')}. "
             f"`max`: closed loop, no think time, {settings.get('max_seconds')} s per server. `fixed`: "
             f"{_num(settings.get('fixed_rps_target'), 0)} req/s ({settings.get('fixed_fraction', 0):.0%} of the "
             f"teacher's max), {settings.get('fixed_seconds')} s per server, each user paced from a random phase. "
             f"Each phase runs in {rounds} rounds visiting the servers in rotating order: req/s and CPU are "
             "medians over rounds, latency percentiles pool all rounds (client-side, exact to the µs). "
             f"`light`: one user, closed loop, {settings.get('light_seconds', 0)} s per server, /search in an "
             "equal share where the bundle has a search index (p50 per endpoint below the ratios). "
             "`-unbatched` servers are the same bundles with `RECSYS_MAX_BATCH=1` (one request per model pass) "
             "and no load shedding: the server as it was before the batcher. "
             f"A {settings.get('warmup_seconds')} s warm-up per server first; stats reset once all users run. "
             f"Machine load average {settings.get('load_average_at_start')} at start, "
             f"{settings.get('load_average_at_end')} at end ({settings.get('cpus')} CPUs): other work on the "
             "machine lowers every number here.", "",
             f"Bundles: teacher `{settings.get('teacher')}`, compressed `{settings.get('compressed')}`; the "
             "ceiling answers from the compressed bundle's popular items.", "",
             "| bundle | mode | req/s | p50 ms | p95 ms | p99 ms | max ms | requests | failures | server CPU % "
             "| server CPU ms/req | server RSS MB | Locust CPU % | bundle MB |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for run in summary["runs"]:
        lines.append(f"| {run['bundle']} | {run['mode']} | {_num(run['rps'], 0)} | {_num(run['p50_ms'], 2)} | "
                     f"{_num(run['p95_ms'], 2)} | {_num(run['p99_ms'], 2)} | {_num(run['max_ms'], 1)} | "
                     f"{run['requests']:,} | {run['failures']:,} | {_num(run['server_cpu'], 0)} | "
                     f"{_num(_cpu_ms_per_request(run), 2)} | {_num(run['server_rss_mb'], 0)} | "
                     f"{_num(run['locust_cpu'], 0)} | {_mb(run['bundle_bytes'])} |")
    lines += ["", "| ratio | value |", "|---|--:|",
              f"| throughput (compressed / teacher, max req/s) | {_num(ratios['throughput'], 2)} |",
              f"| p99 at the fixed rate (compressed / teacher) | {_num(ratios['p99_fixed'], 2)} |",
              f"| of ceiling (compressed / ceiling, max req/s) | {_num(ratios['of_ceiling'], 2)} |"]
    for key, label in OPTIONAL_RATIOS:
        if ratios.get(key) is not None:
            lines.append(f"| {label} | {_num(ratios[key], 2)} |")
    lines += ["", *_endpoint_table(summary["runs"]), *_batch_table(summary["runs"])]
    notes = _notes(summary)
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


OPTIONAL_RATIOS = (
    ("cpu_per_request_of_ceiling", "server CPU per request at max load (compressed / ceiling)"),
    ("batching_throughput_compressed", "batching: compressed max req/s (max_batch default / 1)"),
    ("batching_throughput_teacher", "batching: teacher max req/s (max_batch default / 1)"),
    ("light_p50_batched_vs_unbatched", "light load /recommend p50, compressed (batched / max_batch 1)"),
    ("light_p50_search_vs_recommend", "light load p50, compressed (/search / /recommend, same run)"),
)


def _endpoint_table(runs: list[dict]) -> list[str]:
    """Light load p50 of each endpoint, measured in the same runs (one user, the endpoints interleaved)."""
    rows = [run for run in runs if run["mode"] == "light" and run.get("endpoints")]
    routes = sorted({route for run in rows for route in run["endpoints"]},
                    key=lambda route: (route != "/recommend", route))  # /recommend first: the reference
    if len(routes) < 2:
        return []
    lines = ["Light load p50 ms by endpoint, each bundle's endpoints in the same run (requests):", "",
             "| bundle | " + " | ".join(routes) + " |", "|---|" + "--:|" * len(routes)]
    for run in rows:
        cells = [run["endpoints"].get(route) for route in routes]
        lines.append(f"| {run['bundle']} | " + " | ".join(
            "–" if cell is None else f"{_num(cell['p50_ms'], 2)} ({cell['requests']:,})" for cell in cells) + " |")
    return [*lines, ""]


def _batch_table(runs: list[dict]) -> list[str]:
    """Batch sizes at max load: how many model passes answered how many requests each."""
    rows = [run for run in runs if run["mode"] == "max" and run.get("batch_sizes")]
    if not rows:
        return []
    labels = list(rows[0]["batch_sizes"])
    lines = ["Batch sizes at max load (model passes per size range; requests per pass):", "",
             "| bundle | " + " | ".join(labels) + " | mean |", "|---|" + "--:|" * (len(labels) + 1)]
    for run in rows:
        sizes = run["batch_sizes"]
        lines.append(f"| {run['bundle']} | " + " | ".join(f"{sizes.get(label, 0):,}" for label in labels)
                     + f" | {_num(_mean_batch(run), 1)} |")
    return [*lines, ""]


def _mean_batch(run: dict) -> float | None:
    passes = sum(run["batch_sizes"].values())
    return run["requests"] / passes if passes else None


def _cpu_ms_per_request(run: dict) -> float | None:
    """Server CPU time per request: steadier than req/s when other work shares the machine."""
    if run["server_cpu"] is None or not run["rps"]:
        return None
    return 10.0 * run["server_cpu"] / run["rps"]


def _notes(summary: dict) -> list[str]:
    notes = []
    target = summary.get("settings", {}).get("fixed_rps_target")
    for run in summary["runs"]:
        if run["mode"] == "max" and (run["locust_cpu"] or 0) >= LOCUST_BOUND_CPU:
            notes.append(f"{run['bundle']} max: Locust used {run['locust_cpu']:.0f}% of its core, so this "
                         "throughput is a lower bound set by the load generator, not the server.")
        if run["mode"] == "fixed" and target and run["rps"] < 0.95 * target:
            notes.append(f"{run['bundle']} did not sustain the fixed rate ({run['rps']:.0f} of {target:.0f} "
                         "req/s): its latencies include queueing.")
    for mode, key, unit in (("max", "rps", "req/s"), ("fixed", "p99_ms", "ms p99")):
        spread = {kind: [r[key] for r in summary.get("rounds", []) if r["bundle"] == kind and r["mode"] == mode]
                  for kind in ("teacher", "compressed", "ceiling")}
        if any(len(values) > 1 for values in spread.values()):
            parts = [f"{kind} {', '.join(_num(v, 0 if key == 'rps' else 1) for v in values)}"
                     for kind, values in spread.items() if values]
            notes.append(f"{mode} rounds ({unit}): " + "; ".join(parts) + ".")
    if len(paired := _paired_ratios(summary, "max", "rps")) > 1:
        notes.append("max req/s, compressed / teacher round by round (each round runs the servers back to back, "
                     "so a slow spell of this shared machine tends to hit both): "
                     + ", ".join(f"{ratio:.2f}" for ratio in paired) + f"; median {statistics.median(paired):.2f}.")
    notes += [f"problem: {problem}" for problem in summary.get("problems", [])]
    return notes


def _paired_ratios(summary: dict, mode: str, key: str) -> list[float]:
    """compressed / teacher of ``key`` in each round both servers ran."""
    by_round: dict[int, dict[str, float]] = {}
    for row in summary.get("rounds", []):
        if row["mode"] == mode and row["bundle"] in ("teacher", "compressed") and row[key]:
            by_round.setdefault(row["round"], {})[row["bundle"]] = row[key]
    return [pair["compressed"] / pair["teacher"] for _, pair in sorted(by_round.items()) if len(pair) == 2]


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [kind for kind in ("teacher", "compressed", "ceiling") if any(r["bundle"] == kind for r in summary["runs"])]

    def value(kind: str, mode: str, key: str) -> float:
        found = next((r[key] for r in summary["runs"] if r["bundle"] == kind and r["mode"] == mode), None)
        return float("nan") if found is None else found

    colors = {"teacher": "#7f7f7f", "compressed": "#1f77b4", "ceiling": "#bcbd22"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, mode, key, title in ((left, "max", "rps", "max throughput (req/s, higher is better)"),
                                   (right, "fixed", "p99_ms", "p99 at the fixed rate (ms, lower is better)")):
        values = [value(kind, mode, key) for kind in kinds]
        bars = axis.bar(kinds, values, color=[colors[kind] for kind in kinds])
        axis.bar_label(bars, labels=[_num(v, 0 if key == "rps" else 2) for v in values])
        axis.set_title(title, fontsize=10)
        axis.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Load test: {summary['dataset']} (one worker, one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(summary: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "summary.md", out / "summary.png"]
    paths[0].write_text(json.dumps(without_nan(summary), indent=2, allow_nan=False) + "\n")
    paths[1].write_text(markdown(summary))
    plot(summary, paths[2])
    return paths

