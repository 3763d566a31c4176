"""The search speed benchmark's parts: shopper-like queries from titles, timing through the engine."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_search import markdown, sample_queries, time_queries
from recsys.index import build_index
from recsys.search.engine import SearchConfig, SearchEngine
from recsys.search.lexical import LexicalIndex

TEXTS = ["Slim Racket #0. Sports", "Vintage Atlas #1. Books", "Organic Leash #2. Pets"]


def test_queries_are_one_or_two_words_of_a_title_and_seeded():
    queries = sample_queries(TEXTS, 50, seed=3)
    assert queries == sample_queries(TEXTS, 50, seed=3)
    titles = [text.split(".")[0].lower().replace("#", "").split() for text in TEXTS]
    for query in queries:
        words = query.split()
        assert 1 <= len(words) <= 2
        assert any(" ".join(words) in " ".join(title) for title in titles)


def test_timing_goes_through_the_engine_and_reports_percentiles():
    engine = SearchEngine(LexicalIndex.build(TEXTS), None, build_index(np.eye(3, dtype=np.float32), "Flat"),
                          SearchConfig(semantic=False))
    timing = time_queries(engine, sample_queries(TEXTS, 30, seed=0), warmup=2)
    assert timing["queries"] == 30 and 0 < timing["p50_ms"] <= timing["p99_ms"]
    result = {"dataset": "tiny", "items": 3, "encoder": "none", "vector_index": "Flat",
              "latency": {"bm25": timing, "hybrid": timing}, "bytes": {"bm25": 1e6, "encoder": 0, "vectors": 2e6},
              "build_seconds": {"bm25": 1.0, "encode + vector index": 2.0}, "examples": ["slim"]}
    text = markdown(result)
    assert "| bm25 |" in text and "`slim`" in text
