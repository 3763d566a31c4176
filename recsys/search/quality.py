"""How good a search function is on the benchmark (`recsys.search.queries`), and whether one is better.

Scores are per query, so two search variants run over the same queries can be compared pairwise:
PROTOCOL.md's rule (two models over the same units, with a 95 % interval, never two point
estimates) holds with the *query* as the unit, each query its own "user" in
`recsys.evaluate.paired`. Known-item and attribute queries are scored apart: one has a single right
answer, the other many, and an average over both would hide which a change helped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from recsys.evaluate.paired import BOOTSTRAP_DRAWS, Resampler, UserScores, percentiles
from recsys.search.queries import KINDS, Query

SearchFn = Callable[[list[str], int], list[list[str]]]  # query texts, k -> a ranked list of item ids per query


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def query_scores(results: Sequence[Sequence[str]], queries: Sequence[Query], k: int = 10) -> dict[str, np.ndarray]:
    """Per query: MRR@k, NDCG@k (binary relevance, ideal = min(k, |relevant|) hits on top), HR@k."""
    if len(results) != len(queries):
        raise ValueError(f"{len(results)} result lists for {len(queries)} queries")
    discounts = _discounts(k)
    mrr, ndcg, hit = (np.zeros(len(queries)) for _ in range(3))
    for row, (ranked, query) in enumerate(zip(results, queries, strict=True)):
        relevant = set(query.relevant)
        seen: set[str] = set()
        ranks = []
        for rank, item in enumerate(list(ranked)[:k]):
            # An id listed twice counts once, or a list repeating one hit could score NDCG above 1.
            if item in relevant and item not in seen:
                ranks.append(rank)
            seen.add(item)
        if ranks:
            mrr[row] = 1.0 / (ranks[0] + 1)
            hit[row] = 1.0
            ndcg[row] = discounts[ranks].sum() / discounts[: min(k, len(relevant))].sum()
    return {f"MRR@{k}": mrr, f"NDCG@{k}": ndcg, f"HR@{k}": hit}


def evaluate(search: SearchFn, queries: Sequence[Query], k: int = 10,
             batch: int = 256) -> dict[str, dict[str, np.ndarray]]:
    """Run ``search`` over every query in batches; per-query scores by kind, in the queries' order."""
    results: list[list[str]] = []
    for start in range(0, len(queries), batch):
        texts = [q.text for q in queries[start:start + batch]]
        found = search(texts, k)
        if len(found) != len(texts):
            raise ValueError(f"search returned {len(found)} lists for a batch of {len(texts)} queries")
        results.extend([str(item) for item in ranked] for ranked in found)
    out = {}
    for kind in KINDS:
        rows = [i for i, q in enumerate(queries) if q.kind == kind]
        if rows:
            out[kind] = query_scores([results[i] for i in rows], [queries[i] for i in rows], k)
    return out


def summarise(scores_by_variant: dict[str, np.ndarray], reference: str, seed: int = 0,
              draws: int = BOOTSTRAP_DRAWS) -> list[dict]:
    """Per variant: mean with its 95 % bootstrap interval, and the paired difference and ratio vs
    ``reference`` with theirs. Every variant is resampled with the same query draws, so the
    difference interval is about the variants, not about which queries happened to be drawn."""
    if reference not in scores_by_variant:
        raise ValueError(f"reference {reference!r} is not among the variants {sorted(scores_by_variant)}")
    sizes = {name: len(values) for name, values in scores_by_variant.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"variants must be scored on the same queries, got sizes {sizes}")
    n = sizes[reference]
    queries = np.arange(n)  # each query is its own resampled unit
    resampler = Resampler.over(n, draws=draws, seed=seed)
    scores = {name: UserScores.of(np.asarray(values, dtype=np.float64), queries)
              for name, values in scores_by_variant.items()}
    base = scores[reference]
    base_means = resampler.means(base)
    rows = []
    for name, score in scores.items():
        # A ratio to a reference that scores nothing is undefined, not infinite.
        defined = base.mean > 0
        rows.append({
            "variant": name, "reference": reference, "queries": n,
            "mean": score.mean, "interval": resampler.interval(score),
            "delta": score.mean - base.mean, "delta_interval": percentiles(resampler.means(score) - base_means),
            "ratio": score.mean / base.mean if defined else float("nan"),
            "ratio_interval": resampler.ratio_interval(score, base) if defined else (float("nan"), float("nan")),
        })
    return rows


def _with_interval(value: float, interval: tuple[float, float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(value)} [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def markdown_table(rows: list[dict], metric: str) -> str:
    """variant | metric [95% CI] | Δ vs reference [95% CI] | × reference [95% CI]."""
    reference = rows[0]["reference"] if rows else "reference"
    lines = [f"| variant | {metric} [95% CI] | Δ vs {reference} [95% CI] | × {reference} [95% CI] |",
             "|---|---|---|---|"]
    for row in rows:
        if row["variant"] == row["reference"]:
            delta = ratio = "(reference)"
        else:
            delta = _with_interval(row["delta"], row["delta_interval"], signed=True)
            ratio = _with_interval(row["ratio"], row["ratio_interval"])
        lines.append(f"| {row['variant']} | {_with_interval(row['mean'], row['interval'])} | {delta} | {ratio} |")
    return "\n".join(lines)
