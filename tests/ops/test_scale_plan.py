"""docs/scale.md's generator: base figures come from the reports, projections from the printed formulas."""

from __future__ import annotations

import math

from ops.scale_plan import SCALES, data_lines, events_lines, render, serving_lines, training_lines

LOADTEST = {"runs": [{"bundle": "compressed", "mode": "max", "rps": 500.0, "server_cpu": 80.0},
                     {"bundle": "teacher", "mode": "max", "rps": 100.0, "server_cpu": 90.0}]}
INDEX = {"results": [{"factory": "IVF4096,SQ8", "bytes_per_vector": 73.0, "latency_k100": {"p50_ms": 0.2}}]}
EVENTS = {"rows": [{"backend": "postgresql", "batch": 1, "writers": 1, "events_per_s": 250.0},
                   {"backend": "postgresql", "batch": 100, "writers": 1, "events_per_s": 10_000.0},
                   {"backend": "sqlite", "batch": 1, "writers": 1, "events_per_s": 999.0}]}


def test_serving_projection_follows_its_formula():
    cpu, cores, index = serving_lines(LOADTEST, INDEX)
    base_ms = 0.8 * 1000 / 500  # 80 % of one core over 500 req/s
    expected = [base_ms - 0.2 + 0.2 * math.sqrt(scale) for scale in SCALES]
    assert [float(value) for value in cpu.values] == [round(value, 2) for value in expected]
    assert cores.values == [str(math.ceil(ms / 0.6)) for ms in expected]
    assert index.values[0].startswith("0.1 GB") and "IndexShards" in index.values[-1]


def test_event_volume_is_set_against_the_measured_postgres_rates():
    rates, volume = events_lines(EVENTS)
    assert rates.values[0] == "250 / 10,000"  # PostgreSQL's rows, not SQLite's
    assert volume.values[0].startswith("500: 2.0× one-commit rate, 0.05× batched (one server")
    assert "partition by user" in volume.values[-1]


def test_a_missing_report_names_the_command_that_measures_it():
    lines = [*serving_lines(None, INDEX), *data_lines(None), *training_lines(None)]
    assert all(line.source.startswith("not measured yet: `") for line in lines)
    assert all(value == "–" for line in lines for value in line.values)
    assert "| not measured yet" in render(lines)
