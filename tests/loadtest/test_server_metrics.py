"""Reading a server's /metrics: histogram snapshots by label, their differences and quantile bounds."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtest.server_metrics import buckets, counts_by, histogram_delta, quantile_bound


def exposition(observations: dict[str, list[float]], shed: dict[str, int]) -> str:
    """Real prometheus_client text: a latency histogram by status and a shed counter by reason."""
    registry = CollectorRegistry()
    latency = Histogram("lat_seconds", "latency", ["endpoint", "status"], buckets=(0.01, 0.1, 1.0),
                        registry=registry)
    for status, values in observations.items():
        for value in values:
            latency.labels("/recommend", status).observe(value)
    latency.labels("/similar", "200").observe(5.0)  # another endpoint: never counted below
    counter = Counter("shed_requests", "shed", ["reason"], registry=registry)
    for reason, count in shed.items():
        counter.labels(reason).inc(count)
    return generate_latest(registry).decode()


def test_buckets_pick_series_by_label_and_quantile_bounds_read_the_difference():
    before = exposition({"200": [0.005] * 10, "503": [0.05]}, {"queue_full": 2})
    after = exposition({"200": [0.005] * 10 + [0.05] * 98 + [0.5] * 2, "503": [0.05, 2.0]},
                       {"queue_full": 7, "deadline": 1})
    accepted = (buckets(before, "lat_seconds", endpoint="/recommend", status="200"),
                buckets(after, "lat_seconds", endpoint="/recommend", status="200"))
    assert accepted[1] == {"0.01": 10.0, "0.1": 108.0, "1.0": 110.0, "+Inf": 110.0}
    assert quantile_bound(*accepted, 0.98) == 0.1 and quantile_bound(*accepted, 0.99) == 1.0
    shed = (buckets(before, "lat_seconds", endpoint="/recommend", status="503"),
            buckets(after, "lat_seconds", endpoint="/recommend", status="503"))
    assert math.isinf(quantile_bound(*shed, 0.99))  # the only new one is past the last bound
    assert quantile_bound(accepted[1], accepted[1], 0.99) is None  # nothing happened in between
    assert counts_by(after, "shed_requests", "reason") == {"queue_full": 7.0, "deadline": 1.0}


def test_histogram_delta_counts_observations_per_size_range():
    before = {"1.0": 10, "2.0": 12, "4.0": 12, "8.0": 20, "+Inf": 20}
    after = {"1.0": 15, "2.0": 20, "4.0": 25, "8.0": 40, "+Inf": 41}
    assert histogram_delta(before, after) == {"1": 5, "2": 3, "3-4": 5, "5-8": 7, ">8": 1}
