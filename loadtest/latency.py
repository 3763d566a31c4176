"""Exact stats at the end of a Locust run.

Locust's CSV rounds response times to whole milliseconds, too coarse for a service answering in
one or two: ``LatencyRecorder`` keeps every sample (8 bytes each) and writes float percentiles.
Locust also rewrites ``PREFIX_stats.csv`` only once a second and not at exit, so the file can
miss the run's last second (locustio/locust#2299): ``write_final_csv`` rewrites it at quit.
"""

from __future__ import annotations

import csv
import json
import os
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # importing locust monkey-patches the process (gevent): only the locustfile may
    from locust.env import Environment

AGGREGATED = "Aggregated"
SHED_SUFFIX = "[503]"  # request names of shed responses: "/recommend [503]"
PERCENTILES = {"p50_ms": 50, "p95_ms": 95, "p99_ms": 99}


class LatencyRecorder:
    def __init__(self) -> None:
        self._samples: dict[str, array] = {}

    def record(self, name: str, response_time_ms: float) -> None:
        for key in (name, AGGREGATED):
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = array("d")
            samples.append(response_time_ms)

    def reset(self) -> None:
        self._samples.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, samples in self._samples.items():
            values = np.frombuffer(samples, dtype=np.float64)
            out[name] = {"count": int(len(values)), **percentiles(values), "mean_ms": float(values.mean())}
        return out

    def write(self, path: str | Path) -> None:
        """Percentiles per name to ``path`` (JSON), every aggregated sample beside it (``.npy``) and
        every sample by name (``.npz``), so rounds can be pooled per endpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary(), indent=2, sort_keys=True))
        np.save(samples_path(path), np.frombuffer(self._samples.get(AGGREGATED, array("d")), dtype=np.float64))
        names = sorted(name for name in self._samples if name != AGGREGATED)
        # Names ("/search [known user]") are not safe .npz keys: stored as an array beside numbered ones.
        np.savez(samples_by_name_path(path), names=np.array(names, dtype=str),
                 **{f"s{i}": np.frombuffer(self._samples[name], dtype=np.float64) for i, name in enumerate(names)})


def samples_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".npy")


def samples_by_name_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".npz")


def read_samples_by_name(path: str | Path) -> dict[str, np.ndarray]:
    """What `LatencyRecorder.write` stored per request name (``path``: its JSON)."""
    with np.load(samples_by_name_path(path)) as stored:
        return {str(name): stored[f"s{i}"] for i, name in enumerate(stored["names"].tolist())}


def read_latencies(path: str | Path) -> dict[str, dict[str, float]]:
    return json.loads(Path(path).read_text())


def percentiles(samples: np.ndarray) -> dict[str, float]:
    """p50/p95/p99/max in ms of pooled samples (e.g. several rounds of one phase)."""
    return {**{key: float(np.percentile(samples, q)) for key, q in PERCENTILES.items()},
            "max_ms": float(samples.max())}


def write_final_csv(environment: Environment) -> None:
    """Replace ``--csv``'s stats and failures files with the final numbers (call in the quitting event)."""
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", writer.requests_csv), ("_failures.csv", writer.failures_csv)):
        final, partial = f"{prefix}{suffix}", f"{prefix}{suffix}.final"
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            write(csv.writer(handle))
        # A new inode: Locust's own writer keeps its handle on the old file and cannot clobber this one.
        os.replace(partial, final)
