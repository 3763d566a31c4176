"""loadtest.compare end to end on the tiny bundles (2 s phases), and its pieces on known inputs."""

from __future__ import annotations

import json

import numpy as np

from loadtest.compare import endpoint_latencies, run_row
from loadtest.compare import main as compare_main
from loadtest.harness import LocustStats, parse_stats_csv, pinned
from loadtest.summary import markdown

KINDS = ("teacher", "compressed", "ceiling", "teacher-unbatched", "compressed-unbatched")
RUN_KEYS = {"bundle", "mode", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "requests", "failures", "server_cpu",
            "server_rss_mb", "locust_cpu", "bundle_bytes", "endpoints"}


def test_compare_writes_the_summary(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN", raising=False)
    out = tmp_path / "report"
    code = compare_main(["--teacher", str(tiny.bundles / "teacher"), "--compressed", str(tiny.bundles / "compressed"),
                         "--dataset", "tiny", "--out", str(out), "--users", "4", "--max-seconds", "2",
                         "--fixed-seconds", "2", "--light-seconds", "2", "--rounds", "2", "--warmup-seconds", "0"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0, summary["problems"]
    assert summary["dataset"] == "tiny"
    assert [(run["bundle"], run["mode"]) for run in summary["runs"]] == [
        (kind, mode) for mode in ("max", "fixed", "light") for kind in KINDS]
    assert len(summary["rounds"]) == 2 * 5 * 3  # rounds x servers x phases
    first, second = ([r["bundle"] for r in summary["rounds"][i:i + 5]] for i in (0, 5))
    assert first == list(KINDS) and second == [*KINDS[1:], KINDS[0]]
    for run in summary["runs"]:
        assert set(run) == RUN_KEYS | ({"batch_sizes"} if run["bundle"] != "ceiling" else set())
        assert run["requests"] > 0 and run["failures"] == 0 and run["rps"] > 0
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"]
        assert run["server_rss_mb"] > 10 and run["server_cpu"] is not None and run["locust_cpu"] is not None
        if run["bundle"].endswith("-unbatched"):  # max_batch=1: every model pass answered one request
            assert set(k for k, n in run["batch_sizes"].items() if n) == {"1"}, run["batch_sizes"]
        elif run["bundle"] != "ceiling":
            assert sum(run["batch_sizes"].values()) > 0
    light = [run for run in summary["runs"] if run["mode"] == "light"]
    assert all(run["batch_sizes"]["1"] == sum(run["batch_sizes"].values()) for run in light if "batch_sizes" in run)
    for run in light:  # the tiny bundles have a search index: /search and /recommend in the same light run
        routes = {"/recommend"} if run["bundle"] == "ceiling" else {"/recommend", "/search"}
        assert set(run["endpoints"]) == routes, run["endpoints"]
        assert all(0 < found["p50_ms"] <= found["p99_ms"] and found["requests"] > 0
                   for found in run["endpoints"].values())
        assert sum(found["requests"] for found in run["endpoints"].values()) == run["requests"]
    assert all(set(run["endpoints"]) == {"/recommend"} for run in summary["runs"] if run["mode"] != "light")
    sizes = {run["bundle"]: run["bundle_bytes"] for run in summary["runs"]}
    assert sizes["compressed"] < sizes["teacher"] and sizes["ceiling"] == 0
    assert set(summary["ratios"]) == {"throughput", "p99_fixed", "of_ceiling", "cpu_per_request_of_ceiling",
                                      "light_p50_batched_vs_unbatched", "light_p50_search_vs_recommend",
                                      "batching_throughput_compressed", "batching_throughput_teacher"}
    assert all(value > 0 for value in summary["ratios"].values())
    assert "Batch sizes at max load" in (out / "summary.md").read_text()
    assert "| bundle | /recommend | /search |" in (out / "summary.md").read_text()
    fixed = [run for run in summary["runs"] if run["mode"] == "fixed"]
    target = summary["settings"]["fixed_rps_target"]
    assert all(run["rps"] < 1.5 * target for run in fixed)  # constant_throughput paces users: not a closed loop
    assert "| compressed | fixed |" in (out / "summary.md").read_text()
    assert (out / "summary.png").stat().st_size > 5000
    assert (out / "raw" / "compressed-max-1_stats.csv").exists()
    assert "max rounds (req/s): teacher " in (out / "summary.md").read_text()


def test_stats_csv_parsing(tmp_path):
    path = tmp_path / "x_stats.csv"
    path.write_text(
        "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
        "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
        "99.99%,100%\n"
        "GET,/recommend,900,2,3,3.5,1,40,800,90.5,0.2,3,3,4,4,5,6,8,9,30,40,40\n"
        ",Aggregated,1000,3,3,3.6,1,41.5,810,100.25,0.3,3,3,4,4,5,7,9,11,30,41,41\n")
    assert parse_stats_csv(path) == {"rps": 100.25, "p50_ms": 3.0, "p95_ms": 7.0, "p99_ms": 11.0, "max_ms": 41.5,
                                     "requests": 1000, "failures": 3}
    assert parse_stats_csv(path, "/recommend")["requests"] == 900


def test_markdown_flags_a_locust_bound_run_and_an_unsustained_rate():
    run = {"bundle": "ceiling", "mode": "max", "rps": 5000.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
           "max_ms": 9.0, "requests": 1000, "failures": 0, "server_cpu": 80.0, "server_rss_mb": 90.0,
           "locust_cpu": 99.0, "bundle_bytes": 0}
    slow = {**run, "bundle": "teacher", "mode": "fixed", "rps": 50.0, "locust_cpu": 10.0}
    text = markdown({"dataset": "d", "runs": [run, slow], "settings": {"fixed_rps_target": 100.0},
                     "ratios": {"throughput": None, "p99_fixed": None, "of_ceiling": None}})
    assert "lower bound" in text and "did not sustain" in text


def test_markdown_pairs_throughput_round_by_round():
    def one(bundle, number, rps):
        return {"bundle": bundle, "mode": "max", "round": number, "rps": rps}

    rounds = [one("teacher", 1, 100.0), one("compressed", 1, 250.0), one("teacher", 2, 80.0),
              one("compressed", 2, 160.0), one("teacher", 3, 100.0)]  # round 3 has no compressed run
    text = markdown({"dataset": "d", "runs": [], "rounds": rounds, "settings": {},
                     "ratios": {"throughput": None, "p99_fixed": None, "of_ceiling": None}})
    assert "round by round" in text and ": 2.50, 2.00; median 2.25." in text


def test_pinning_falls_back_without_taskset(monkeypatch):
    monkeypatch.setattr("loadtest.harness.shutil.which", lambda name: None)
    assert pinned(["python", "-m", "serving"], 0) == ["python", "-m", "serving"]
    assert pinned(["python"], None) == ["python"]


def test_rounds_pool_samples_and_take_medians():
    def stats(rps, samples, cpu):
        return LocustStats(rps=rps, p50_ms=0, p95_ms=0, p99_ms=0, max_ms=0, requests=len(samples), failures=0,
                           exit_code=0, locust_cpu=10.0, server_cpu=cpu, server_rss_mb=100.0 + rps,
                           samples=np.asarray(samples, dtype=float))

    row = run_row("teacher", "max", [stats(100, [1, 2, 3], 50), stats(300, [4, 5], 90), stats(200, [100], 70)], 7)
    assert row["rps"] == 200 and row["server_cpu"] == 70 and row["server_rss_mb"] == 400
    assert row["requests"] == 6 and row["max_ms"] == 100 and row["p50_ms"] == 3.5 and row["bundle_bytes"] == 7
    assert set(row) == RUN_KEYS and row["endpoints"] == {}  # no samples by name: no per-endpoint figures


def test_endpoints_pool_rounds_by_route_without_shed_requests():
    def stats(by_name):
        return LocustStats(rps=1, p50_ms=0, p95_ms=0, p99_ms=0, max_ms=0, requests=0, failures=0, exit_code=0,
                           samples_by_name={name: np.asarray(values, dtype=float) for name, values in by_name.items()})

    rounds = [stats({"/recommend": [1, 2], "/recommend [unknown user]": [3], "/search": [10, 20]}),
              stats({"/search [known user]": [30], "/recommend": [4], "/recommend [503]": [0.1] * 9})]
    found = endpoint_latencies(rounds)
    assert set(found) == {"/recommend", "/search"}
    assert found["/recommend"]["requests"] == 4 and found["/recommend"]["p50_ms"] == 2.5
    assert found["/search"]["requests"] == 3 and found["/search"]["p50_ms"] == 20


def test_markdown_reads_light_p50_by_endpoint():
    def light(bundle, endpoints):
        return {"bundle": bundle, "mode": "light", "rps": 500.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
                "max_ms": 9.0, "requests": 1000, "failures": 0, "server_cpu": 80.0, "server_rss_mb": 90.0,
                "locust_cpu": 30.0, "bundle_bytes": 0, "endpoints": endpoints}

    runs = [light("compressed", {"/recommend": {"p50_ms": 0.8, "p99_ms": 2.0, "requests": 500},
                                 "/search": {"p50_ms": 1.6, "p99_ms": 3.0, "requests": 500}}),
            light("ceiling", {"/recommend": {"p50_ms": 0.3, "p99_ms": 1.0, "requests": 1000}})]
    text = markdown({"dataset": "d", "runs": runs, "settings": {},
                     "ratios": {"throughput": None, "p99_fixed": None, "of_ceiling": None,
                                "light_p50_search_vs_recommend": 2.0}})
    assert "| bundle | /recommend | /search |" in text
    assert "| compressed | 0.80 (500) | 1.60 (500) |" in text and "| ceiling | 0.30 (1,000) | – |" in text
    assert "(/search / /recommend, same run) | 2.00 |" in text

