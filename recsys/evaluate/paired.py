"""Evidence for decisions: per-user scores, bootstrap intervals, and paired ratios between models.

PROTOCOL.md, "Noise": two models are compared over the same users, with a 95 % interval, never
on two point estimates. A model's score here is its mean over scored events (each user's events
count once each); the interval resamples *users* with replacement (a user's events move together,
as they are not independent), and every model is resampled with the same draws, so the interval of
a ratio between two models is paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.evaluate.metrics import hit_ranks

BOOTSTRAP_DRAWS = 2000
CONFIDENCE = 0.95
GATE_METRICS = ("NDCG@10", "HR@10")


def event_scores(topk: np.ndarray, targets: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per event: NDCG@k and HR@k of its target in its top-k list."""
    ranks = hit_ranks(np.asarray(topk)[:, :k], np.asarray(targets))
    inside = ranks > 0
    return {f"NDCG@{k}": np.where(inside, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0),
            f"HR@{k}": inside.astype(np.float64)}


@dataclass(frozen=True)
class UserScores:
    """One model's scores summed per user (``sums`` [users]) with each user's event count."""

    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, users: np.ndarray) -> UserScores:
        """Sum event ``values`` per user (``users``: any labels, one per event)."""
        _, keys = np.unique(users, return_inverse=True)
        return cls(np.bincount(keys, weights=values).astype(np.float64),
                   np.bincount(keys).astype(np.float64))

    @property
    def mean(self) -> float:
        return float(self.sums.sum() / max(self.counts.sum(), 1.0))


@dataclass(frozen=True)
class Resampler:
    """One fixed set of bootstrap draws over ``n_users`` users: weights [draws, users] (how often
    each user is drawn), shared by every model scored on those users."""

    weights: np.ndarray

    @classmethod
    def over(cls, n_users: int, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> Resampler:
        rng = np.random.default_rng(seed)
        if n_users == 0:
            return cls(np.zeros((draws, 0), dtype=np.float32))
        return cls(rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=draws).astype(np.float32))

    def means(self, scores: UserScores) -> np.ndarray:
        """The model's mean score in every draw."""
        return (self.weights @ scores.sums) / np.maximum(self.weights @ scores.counts, 1.0)

    def interval(self, scores: UserScores) -> tuple[float, float]:
        """95 % percentile interval of the mean score."""
        return percentiles(self.means(scores))

    def ratios(self, numerator: UserScores, denominator: UserScores) -> np.ndarray:
        """mean(numerator) / mean(denominator) in every draw, paired: the same users in both."""
        return (self.weights @ numerator.sums) / np.maximum(self.weights @ denominator.sums, 1e-12)

    def ratio_interval(self, numerator: UserScores, denominator: UserScores) -> tuple[float, float]:
        """95 % interval of mean(numerator) / mean(denominator), paired."""
        return percentiles(self.ratios(numerator, denominator))


def percentiles(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDecision:
    """Whether a candidate is *shown* worse than a reference by more than ``threshold``x.

    The rule: refuse when the upper end of the 95 % interval of candidate / reference is below
    ``threshold`` (the data rule out the candidate keeping that share); accept otherwise. Equal
    models pass almost always; a much worse one is refused when the evidence can show it."""

    ratio: float
    interval: tuple[float, float]
    threshold: float

    @property
    def shown_worse(self) -> bool:
        return bool(self.interval[1] < self.threshold)

    @classmethod
    def of(cls, candidate: UserScores, reference: UserScores, threshold: float,
           resampler: Resampler) -> PairedDecision:
        ratio = candidate.mean / max(reference.mean, 1e-12)
        return cls(ratio, resampler.ratio_interval(candidate, reference), threshold)

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "interval": list(self.interval), "threshold": self.threshold,
                "shown_worse": self.shown_worse}

    def describe(self, candidate: str, reference: str) -> str:
        low, high = self.interval
        return (f"{candidate} / {reference} = {self.ratio:.3f}, 95 % interval [{low:.3f}, {high:.3f}] "
                f"{'<' if self.shown_worse else '>='} {self.threshold:.2f} at its upper end")


RULE = ("refuse when the upper end of the 95 % paired bootstrap interval of compressed / teacher "
        "NDCG@10 is below the threshold (the compressed bundle is shown worse); publish otherwise")
