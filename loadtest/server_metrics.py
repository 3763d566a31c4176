"""What a server's ``/metrics`` says about a run: snapshots of its histograms and counters, and
the difference between two snapshots (the run between them).

Client-side latency (Locust) includes the time a request waits in the kernel and in Locust itself;
these server-side figures start when the request enters the app, so the two together say where
the time went.
"""

from __future__ import annotations

import math
import re

import httpx

_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def _samples(text: str, name: str, labels: dict[str, str]):
    for metric, label_text, value in _SAMPLE.findall(text):
        if metric != name:
            continue
        found = dict(_LABEL.findall(label_text))
        if all(found.get(key) == want for key, want in labels.items()):
            yield found, float(value)


def buckets(text: str, metric: str, **labels: str) -> dict[str, float]:
    """A histogram's cumulative counts by upper bound (``le``), summed over the series matching ``labels``."""
    counts: dict[str, float] = {}
    for found, value in _samples(text, f"{metric}_bucket", labels):
        counts[found["le"]] = counts.get(found["le"], 0.0) + value
    return counts


def counts_by(text: str, metric: str, label: str) -> dict[str, float]:
    """A counter's values by one label (``metric`` without the ``_total`` suffix)."""
    return {found[label]: value for found, value in _samples(text, f"{metric}_total", {})}


def _bounds(before: dict[str, float], after: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound, observations at or below it) between two cumulative snapshots, ascending."""
    return sorted((float(bound), after[bound] - before.get(bound, 0.0)) for bound in after)


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Observations per integer range between two snapshots: ``{"1": n, "2": n, "3-4": n, ..., ">256": n}``."""
    out: dict[str, int] = {}
    below, low = 0.0, 1
    for bound, cumulative in _bounds(before, after):
        if math.isinf(bound):
            label = f">{low - 1}"
        else:
            high = int(bound)
            label = str(high) if high == low else f"{low}-{high}"
            low = high + 1
        out[label] = int(round(cumulative - below))
        below = cumulative
    return out


def quantile_bound(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """The smallest bucket bound holding a share ``q`` of the observations between two snapshots
    (``inf``: beyond the last finite bound; ``None``: no observations)."""
    bounds = _bounds(before, after)
    total = bounds[-1][1] if bounds else 0.0
    if total <= 0:
        return None
    return next(bound for bound, cumulative in bounds if cumulative >= q * total)
